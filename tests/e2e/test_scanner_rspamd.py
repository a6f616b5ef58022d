"""Message checks against the real rspamd (with clamd behind its antivirus module) and the real
DNS server holding the senders' SPF, DKIM and DMARC records (SPEC.md section 8).

The listener runs in the test's event loop on a socket in the server namespace, clients connect
from the client namespace from addresses that pick their mail flow policy; the listener asks
rspamd on the host's loopback. rspamd, clamd and the DNS server are started once per session
(``scanning``). What each test proves is seen from three sides: the client's reply, what reached
the Maildir (with the headers it carries), and the mail log.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.support.clamd import EICAR, SIGNATURE
from tests.support.dns_server import Record, Zone
from tests.support.netns import NetPair
from tests.support.rspamd import FAULTS, FakeRspamd, Scanning, scanning
from tests.support.smtp import HARVESTER, PLAIN, TRUSTED, SmtpEnv, env, smtp_pair

__all__ = ["scanning", "smtp_pair"]

CHECKS_ON = {"spam_check": True, "virus_check": True, "spf": True, "dkim": True, "dmarc": True}
SELECTOR = "sel1"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """A private key (PEM) and its DKIM record's ``p=`` value."""
    path = tmp_path_factory.mktemp("dkim") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    return path.read_bytes(), base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def stack(scanning: Scanning, dkim_key: tuple[bytes, str]) -> Scanning:
    """The session's stack with these tests' sender domains: x.test publishes DMARC p=reject,
    y.test p=none; both allow only PLAIN's address to send (SPF ``-all``)."""
    for domain, dmarc in (("x.test", "reject"), ("y.test", "none")):
        scanning.dns.load(Zone(domain, [
            Record(domain, "TXT", f"v=spf1 ip4:{PLAIN} -all"),
            Record(f"{SELECTOR}._domainkey.{domain}", "TXT", f"v=DKIM1; k=rsa; p={dkim_key[1]}"),
            Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={dmarc}"),
        ]))
    return scanning


def scanned_env(pair: NetPair, tmp_path: Path, url: str, **scanner: Any) -> SmtpEnv:
    """Every policy gets the five checks from the listener's defaults, except TRUSTED (none)."""
    environment = env(pair, tmp_path)
    data = environment.data
    data["listeners"][0]["defaults"].update(CHECKS_ON)
    data["mail_flow_policies"]["TRUSTED"].update(dict.fromkeys(CHECKS_ON, False))
    data["scanner"] = {"rspamd": url, "timeout": 10, **scanner}
    return environment


def message(domain: str, body: bytes = b"Shall we have lunch at noon?\r\n", extra: str = "") -> bytes:
    """A plain message dated now: rspamd scores a date days in the past (DATE_IN_PAST), which moved
    the scores these tests aim at out of their action's range as the calendar went on."""
    return (f"From: Alice <alice@{domain}>\r\nTo: bob@example.test\r\nSubject: lunch tomorrow\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: <{os.urandom(6).hex()}@{domain}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n{extra}\r\n").encode() + body


def signed(text: bytes, domain: str, key: bytes) -> bytes:
    signature: bytes = dkim.sign(text, SELECTOR.encode(), domain.encode(), key,
                                 include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + text


async def send(environment: SmtpEnv, source: str, sender: str, text: bytes) -> tuple[int, str]:
    client = await environment.client(source)
    try:
        await client.envelope(sender, "bob@example.test")
        answer = await client.message(text)
        return answer.code, answer.text
    finally:
        await client.close()


def stored_message(environment: SmtpEnv) -> str:
    files = environment.stored()
    assert len(files) == 1, files
    return (Path(environment.maildir) / "new" / files[0]).read_text()


def header(stored: str, name: str) -> str | None:
    """A header field of the stored message, unfolded (None when it has none)."""
    lines = stored.split("\n\n", 1)[0].split("\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(name.lower() + ":"):
            parts = [line[len(name) + 1:].strip()]
            parts += [more.strip() for more in _continuation(lines[i + 1:])]
            return " ".join(parts)
    return None


def _continuation(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.startswith(("\t", " ")):
            break
        out.append(line)
    return out


async def test_gtube_is_refused_with_550_and_rspamds_message(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    gtube = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        assert await send(environment, PLAIN, "alice@x.test", message("x.test", gtube)) == (550, "5.7.1 Gtube pattern")
        assert environment.stored() == []
        assert environment.log_lines(r"MID \d+ using engine: rspamd spam positive score [0-9.]+ action reject$")
        assert environment.log_lines(r"MID \d+ rejected by message checks: 550 5\.7\.1 Gtube pattern$")


async def test_a_policy_without_checks_never_reaches_rspamd(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        before = stack.rspamd.scanned()
        code, _ = await send(environment, TRUSTED, "alice@x.test", message("x.test"))
        assert code == 250
        assert stack.rspamd.scanned() == before
        stored = stored_message(environment)
        assert header(stored, "Authentication-Results") is None
        assert header(stored, "X-Spam") is None
        assert not environment.log_lines("using engine|SPF:|DKIM:|DMARC:|antivirus")
        code, _ = await send(environment, PLAIN, "alice@x.test", message("x.test"))  # the same ham, checked
        assert code == 250
        assert stack.rspamd.scanned() == before + 1
        assert environment.log_lines(r"using engine: rspamd spam negative score -?[0-9.]+ action no action$")
        assert environment.log_lines(r"MID \d+ antivirus negative$")


async def test_eicar_is_refused_with_554_naming_the_virus(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    attachment = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    body = (b"--XX\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n"
            b"--XX\r\nContent-Type: application/octet-stream; name=eicar.com\r\n"
            b"Content-Disposition: attachment; filename=eicar.com\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + attachment + b"--XX--\r\n")
    text = message("x.test", body).replace(b"Content-Type: text/plain\r\n\r\n",
                                           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n", 1)
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, reply = await send(environment, PLAIN, "alice@x.test", text)
        assert (code, reply) == (554, f"5.7.0 Message rejected: virus {SIGNATURE}.UNOFFICIAL")
        assert environment.stored() == []
        assert environment.log_lines(rf"MID \d+ antivirus positive '{SIGNATURE}\.UNOFFICIAL'$")


async def test_spf_dkim_and_dmarc_pass(smtp_pair: NetPair, tmp_path: Path, stack: Scanning,
                                       dkim_key: tuple[bytes, str]) -> None:
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, _ = await send(environment, PLAIN, "alice@x.test", signed(message("x.test"), "x.test", dkim_key[0]))
        assert code == 250
        results = header(stored_message(environment), "Authentication-Results")
        assert results == ("mx.example.test; spf=pass smtp.mailfrom=alice@x.test; "
                           "dkim=pass header.d=x.test header.s=sel1; dmarc=pass (p=reject) header.from=x.test")
        assert environment.log_lines(r"MID \d+ SPF: mailfrom identity alice@x\.test Pass$")
        assert environment.log_lines(r"MID \d+ DKIM: pass signature verified \(d=x\.test s=sel1\)$")
        assert environment.log_lines(r"MID \d+ DMARC: Verification passed$")


async def test_spf_and_dkim_failures_under_dmarc_p_none_pass_with_the_results(
        smtp_pair: NetPair, tmp_path: Path, stack: Scanning, dkim_key: tuple[bytes, str]) -> None:
    tampered = signed(message("y.test"), "y.test", dkim_key[0]).replace(b"noon", b"one")
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, _ = await send(environment, HARVESTER, "alice@y.test", tampered)
        assert code == 250
        results = header(stored_message(environment), "Authentication-Results")
        assert results == ("mx.example.test; spf=fail smtp.mailfrom=alice@y.test; "
                           "dkim=fail header.d=y.test header.s=sel1; dmarc=fail (p=none) header.from=y.test")
        assert environment.log_lines(r"SPF: mailfrom identity alice@y\.test Fail$")
        assert environment.log_lines(r"DKIM: fail signature did not verify \(d=y\.test s=sel1\)$")
        assert environment.log_lines(r"DMARC: Verification failed \(domain y\.test policy none\)$")


async def test_a_dmarc_p_reject_failure_is_refused_with_550(
        smtp_pair: NetPair, tmp_path: Path, stack: Scanning, dkim_key: tuple[bytes, str]) -> None:
    tampered = signed(message("x.test"), "x.test", dkim_key[0]).replace(b"noon", b"one")
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, reply = await send(environment, HARVESTER, "alice@x.test", tampered)
        assert (code, reply) == (550, "5.7.1 Message rejected as spam")
        assert environment.stored() == []
        assert environment.log_lines(r"SPF: mailfrom identity alice@x\.test Fail$")
        assert environment.log_lines(r"DKIM: fail signature did not verify \(d=x\.test s=sel1\)$")
        assert environment.log_lines(r"DMARC: Verification failed \(domain x\.test policy reject\)$")


async def test_add_header_passes_the_message_marked(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, _ = await send(environment, PLAIN, "alice@x.test", message("x.test", extra="X-Netpolicy-Test-Score: 8\r\n"))
        assert code == 250
        stored = stored_message(environment)
        assert header(stored, "X-Spam") == "Yes"
        score = header(stored, "X-Spam-Score")
        assert score is not None and 6.0 <= float(score) < 15.0
        assert environment.log_lines(rf"using engine: rspamd spam positive score {score} action add header$")


async def test_greylist_is_a_451(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        code, reply = await send(environment, PLAIN, "alice@x.test", message("x.test", extra="X-Netpolicy-Test-Score: 3\r\n"))
        assert (code, reply) == (451, "4.7.1 Try again later")
        assert environment.stored() == []
        assert environment.log_lines(r"action greylist$")


async def test_spam_check_off_ignores_rspamds_action(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    """GTUBE makes rspamd say reject whatever the settings; with only virus_check on, the
    message passes and only the antivirus result is logged."""
    gtube = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
    environment = scanned_env(smtp_pair, tmp_path, stack.rspamd.url)
    environment.data["listeners"][0]["defaults"].update(dict.fromkeys(CHECKS_ON, False), virus_check=True)
    async with environment:
        assert (await send(environment, PLAIN, "alice@x.test", message("x.test", gtube)))[0] == 250
        assert environment.log_lines(r"antivirus negative$")
        assert not environment.log_lines("using engine|SPF:|DKIM:|DMARC:")
        assert header(stored_message(environment), "Authentication-Results") is None


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
async def test_scanner_faults_follow_on_error(smtp_pair: NetPair, tmp_path: Path, fault: str, on_error: str) -> None:
    """rspamd down, slower than the timeout, answering 500 or garbage, closing mid-answer, or
    its antivirus unable to scan: tempfail is 451 with nothing stored, accept is 250 with the
    message stored unscanned; the mail log says which."""
    async with FakeRspamd(fault) as fake, scanned_env(smtp_pair, tmp_path, fake.url, timeout=0.5, on_error=on_error) as environment:
        started = time.monotonic()
        code, reply = await send(environment, PLAIN, "alice@x.test", message("x.test"))
        elapsed = time.monotonic() - started
        if on_error == "tempfail":
            assert (code, reply) == (451, "4.7.1 Message checks unavailable, try again later")
            assert environment.stored() == []
            assert environment.log_lines(r"message checks failed: .*; the client keeps the message \(451\)$")
        else:
            assert code == 250
            assert len(environment.stored()) == 1
            assert environment.log_lines(r"message checks failed: .*; passed on unscanned \(on_error accept\)$")
        assert len(fake.requests) == (0 if fault == "down" else 1)
        assert elapsed < 3.0  # the slow scanner is given up at its 0.5 s timeout


def fields_named(stored: str, name: str) -> list[str]:
    """Every header field of the stored message called ``name``, unfolded."""
    lines = stored.split("\n\n", 1)[0].split("\n")
    return [" ".join([line[len(name) + 1:].strip(), *(more.strip() for more in _continuation(lines[i + 1:]))])
            for i, line in enumerate(lines) if line.lower().startswith(name.lower() + ":")]


FORGED = ("X-Spam: No\r\nX-Spam-Score: -10.00\r\n"
          "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=alice@x.test;\r\n\tdkim=pass header.d=x.test\r\n"
          "Authentication-Results: relay.other.test 1; spf=pass smtp.mailfrom=alice@x.test\r\n")
QUOTED = b"> X-Spam: No\r\nX-Spam: No\r\nAuthentication-Results: mx.example.test; spf=pass\r\n"  # the same lines in the body


async def test_forged_scanner_headers_give_way_to_ours(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    """RFC 8601 section 5: a sender's X-Spam fields and Authentication-Results in our name are
    removed before ours are added; another host's results and the body stay as sent."""
    text = message("x.test", QUOTED, extra=FORGED + "X-Netpolicy-Test-Score: 8\r\n")
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        assert (await send(environment, PLAIN, "alice@x.test", text))[0] == 250
        stored = stored_message(environment)
        assert fields_named(stored, "X-Spam") == ["Yes"]
        (score,) = fields_named(stored, "X-Spam-Score")
        assert 6.0 <= float(score) < 15.0
        assert fields_named(stored, "Authentication-Results") == [
            "mx.example.test; spf=pass smtp.mailfrom=alice@x.test; dkim=none; dmarc=pass (p=reject) header.from=x.test",
            "relay.other.test 1; spf=pass smtp.mailfrom=alice@x.test",
        ]
        assert stored.endswith(QUOTED.decode().replace("\r\n", "\n"))
        assert environment.log_lines(
            r"MID \d+ removed 3 forged header fields \(X-Spam, X-Spam-Score, Authentication-Results\)$")


async def test_without_checks_the_message_is_left_as_sent(smtp_pair: NetPair, tmp_path: Path, stack: Scanning) -> None:
    text = message("x.test", QUOTED, extra=FORGED)
    async with scanned_env(smtp_pair, tmp_path, stack.rspamd.url) as environment:
        assert (await send(environment, TRUSTED, "alice@x.test", text))[0] == 250
        stored = stored_message(environment)
        assert stored.endswith(text.decode().replace("\r\n", "\n"))
        assert fields_named(stored, "X-Spam") == ["No"] and len(fields_named(stored, "Authentication-Results")) == 2
        assert not environment.log_lines("forged")
