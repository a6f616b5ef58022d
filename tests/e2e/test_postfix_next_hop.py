"""A real Postfix behind ``netpolicy serve`` (SPEC.md section 9): the MTA sees the real client.

``serve`` runs in the server namespace with ``next_hop: 127.0.0.1:10025``; a private Postfix
(tests/support/postfix.py) listens there, inside the same namespace, and holds what it accepts
in its hold queue, where ``postcat`` reads the envelope back. Clients connect from the client
namespace, from 192.0.2.99 (accepted by the serve policy).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.dns_server import DnsServer, Zone, resolv_conf, reverse_name
from tests.support.netns import NetPair
from tests.support.postfix import Postfix, postfix_instance
from tests.support.serve import Served
from tests.support.serve_policy import ACCEPTED, LATER, PORT, policy_text
from tests.support.smtp import RawClient
from tests.support.wait import wait_until_async

HOP_PORT = 10025
HOLD = {"smtpd_data_restrictions": "check_client_access static:HOLD"}
XCLIENT = {"smtpd_authorized_xclient_hosts": "127.0.0.1", **HOLD}

pytestmark = pytest.mark.skipif(not shutil.which("postfix"), reason="postfix (Debian package postfix) is not installed")


@dataclass
class Front:
    """serve relaying to ``hop``; clients from ``client()`` are closed when the test ends (an
    open session would hold serve's stop for its grace period)."""

    pair: NetPair
    served: Served
    hop: Postfix
    clients: list[RawClient] = field(default_factory=list)

    async def client(self, source: str = ACCEPTED) -> RawClient:
        c = await RawClient.open(self.pair.client, (self.pair.server_v4, PORT), source)
        self.clients.append(c)
        assert (await c.answer()).code == 220
        assert (await c.cmd("EHLO client.test")).code == 250
        return c

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(OSError):
                await c.close()
        

@contextlib.asynccontextmanager
async def front(pair: NetPair, tmp_path: Path, settings: dict[str, str], delivery: str = "") -> AsyncIterator[Front]:
    """Postfix with ``settings`` in the server namespace, and serve relaying to it."""
    for address in (ACCEPTED, LATER):
        pair.add_client_address(address)
    with postfix_instance(HOP_PORT, ns=pair.server, settings=settings) as hop:
        served = Served(pair, tmp_path)
        maildir = tmp_path / "maildir"
        text = policy_text(pair.server_v4, maildir, kernel=False)
        text = text.replace(f"delivery: {{maildir: {maildir}}}", f"delivery: {{next_hop: '127.0.0.1:{HOP_PORT}', timeout: 10{delivery}}}")
        served.write_policy(text=text)
        served.start()
        f = Front(pair, served, hop)
        try:
            yield f
        finally:
            await f.close()
            served.stop()


async def send(c: RawClient, mail: str, rcpt: str, body: bytes = b"Subject: test\r\n\r\nhello\r\n") -> str:
    """One transaction; the first refusal, or the final reply, as ``code text``."""
    for line in (mail, rcpt):
        answer = await c.cmd(line)
        if answer.code != 250:
            return str(answer)
    return str(await c.message(body))


def held(hop: Postfix) -> list[str]:
    return [hop.postcat(path) for path in hop.queue_files()]


async def test_postfix_logs_and_judges_the_real_client_through_xclient(netpair: NetPair, tmp_path: Path) -> None:
    async with front(netpair, tmp_path, XCLIENT) as f:
        served, hop = f.served, f.hop
        c = await f.client()
        assert (await send(c, "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")).startswith("250 2.0.0 Ok: queued as ")
        log = hop.log_text()
        assert re.search(rf"\]: [0-9A-F]+: client=unknown\[{re.escape(ACCEPTED)}\]", log), log
        assert re.search(rf"hold: DATA from unknown\[{re.escape(ACCEPTED)}\]: .* proto=ESMTP helo=<client\.test>", log), log
        [queued] = held(hop)
        assert f"Received: from client.test (unknown [{ACCEPTED}])\n\tby hop.example.test (Postfix) with ESMTP" in queued
        assert f"Received: from client.test (unknown [{ACCEPTED}])\n\tby mx.example.test (netpolicy)" in queued
        assert "XCLIENT" not in served.stderr_text()
        # serve's QUIT is not waited for, yet reaches the hop before the connection closes.
        quit = re.compile(rf"disconnect from unknown\[{re.escape(ACCEPTED)}\] .*quit=1")
        await wait_until_async(lambda: quit.search(hop.log_text()), "Postfix logged serve's QUIT")


async def test_a_postfix_client_rule_on_the_real_address_takes_effect_through_serve(netpair: NetPair, tmp_path: Path) -> None:
    rules = tmp_path / "clients.cidr"
    rules.write_text(f"{ACCEPTED} REJECT Refused by the hop's own rule\n")
    rules.chmod(0o644)
    tmp_path.chmod(0o755)
    settings = {**XCLIENT, "smtpd_client_restrictions": f"check_client_access cidr:{rules}"}
    async with front(netpair, tmp_path, settings) as f:
        hop = f.hop
        refused = await f.client(ACCEPTED)
        answer = await send(refused, "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")
        assert answer == f"554 5.7.1 <unknown[{ACCEPTED}]>: Client host rejected: Refused by the hop's own rule"
        other = await f.client(LATER)
        assert (await send(other, "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")).startswith("250 ")
        assert len(hop.queue_files()) == 1


async def test_a_reverse_lookup_that_failed_for_now_is_deferred_by_the_hop(netpair: NetPair, tmp_path: Path) -> None:
    """serve's PTR lookup for ACCEPTED gets SERVFAIL (XCLIENT NAME=[TEMPUNAVAIL]), LATER's gets
    NXDOMAIN ([UNAVAILABLE]): Postfix's reject_unknown_client_hostname defers the first whatever
    unknown_client_reject_code says, and refuses the second with it."""
    dns = DnsServer("127.0.0.1", 53, netns=netpair.server)
    dns.load(Zone("2.0.192.in-addr.arpa", []), Zone("100.51.198.in-addr.arpa", []))
    dns.servfail(reverse_name(ACCEPTED))
    settings = {**XCLIENT, "smtpd_client_restrictions": "reject_unknown_client_hostname",
                "unknown_client_reject_code": "550"}
    with dns, resolv_conf(netpair.server, "127.0.0.1"):
        async with front(netpair, tmp_path, settings) as f:
            deferred = await send(await f.client(ACCEPTED), "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")
            assert deferred.startswith("450 4.7.25 ") and "cannot find your hostname" in deferred, deferred
            refused = await send(await f.client(LATER), "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")
            assert refused.startswith("550 5.7.25 ") and "cannot find your hostname" in refused, refused
            assert f.hop.queue_files() == []


async def test_dsn_parameters_reach_the_postfix_queue_file(netpair: NetPair, tmp_path: Path) -> None:
    async with front(netpair, tmp_path, XCLIENT) as f:
        hop = f.hop
        c = await f.client()
        ehlo = await c.cmd("EHLO client.test")
        assert "DSN" in ehlo.lines and "SMTPUTF8" in ehlo.lines
        answer = await send(c, "MAIL FROM:<a@sender.test> RET=HDRS ENVID=Env+2BId-7", "RCPT TO:<b@example.test> NOTIFY=NEVER ORCPT=rfc822;B@example.test")
        assert answer.startswith("250 ")
        [queued] = held(hop)
        for record in ("named_attribute: envelope_id=Env+Id-7", "named_attribute: ret_flags=2",  # RET=HDRS
                       "named_attribute: notify_flags=1",  # NOTIFY=NEVER
                       "named_attribute: dsn_orig_rcpt=rfc822;B@example.test"):
            assert record in queued, queued


@pytest.mark.parametrize("utf8_hop", [True, False])
async def test_a_utf8_address_reaches_postfix_when_it_offers_smtputf8(netpair: NetPair, tmp_path: Path, utf8_hop: bool) -> None:
    settings = {**XCLIENT, "smtputf8_enable": "yes" if utf8_hop else "no"}
    async with front(netpair, tmp_path, settings) as f:
        hop = f.hop
        c = await f.client()
        answer = await send(c, "MAIL FROM:<a@sender.test> SMTPUTF8", "RCPT TO:<用户@example.test>")
        if utf8_hop:
            assert answer.startswith("250 ")
            [queued] = held(hop)
            assert "recipient: 用户@example.test" in queued
            assert "with UTF8SMTP" in queued
        else:
            assert answer == "553 5.6.7 The next hop does not offer SMTPUTF8, which this UTF-8 address needs"
            assert (await c.cmd("RSET")).code == 250
            assert (await send(c, "MAIL FROM:<a@sender.test> SMTPUTF8", "RCPT TO:<b@example.test>")).startswith("250 ")
            assert len(hop.queue_files()) == 1


async def test_xforward_when_xclient_is_not_authorised(netpair: NetPair, tmp_path: Path) -> None:
    async with front(netpair, tmp_path, {"smtpd_authorized_xforward_hosts": "127.0.0.1", **HOLD}) as f:
        served, hop = f.served, f.hop
        c = await f.client()
        assert (await send(c, "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")).startswith("250 ")
        mid = re.search(r"MID (\d+) ICID", served.log_text())
        assert mid is not None, served.log_text()
        log = hop.log_text()
        assert re.search(rf"client=localhost\[127\.0\.0\.1\], orig_queue_id={mid[1]}, orig_client=unknown\[{re.escape(ACCEPTED)}\]", log) or \
            re.search(rf"orig_queue_id={mid[1]}, orig_client=unknown\[{re.escape(ACCEPTED)}\]", log), log
        [queued] = held(hop)
        assert "named_attribute: log_helo_name=client.test" in queued


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=hop.example.test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    cert.chmod(0o644)
    key.chmod(0o644)
    return cert, key


@pytest.mark.parametrize(("mode", "ca", "starttls", "expected"), [
    ("may", None, True, "250"),  # a self-signed hop: encrypted, not verified
    ("may", None, False, "250"),  # no STARTTLS offered: plain
    ("encrypt", "hop", True, "250"),  # verified against tls_ca
    ("encrypt", "other", True, "451"),  # a certificate tls_ca did not sign
    ("encrypt", "hop", False, "451"),  # STARTTLS required and not offered
])
async def test_tls_towards_postfix(netpair: NetPair, tmp_path: Path, mode: str, ca: str | None, starttls: bool, expected: str) -> None:
    tmp_path.chmod(0o755)
    cert, key = _certificate(tmp_path, "hop")
    _certificate(tmp_path, "other")
    settings = {**XCLIENT, "smtpd_tls_security_level": "may" if starttls else "none",
                "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key), "smtpd_tls_loglevel": "1"}
    delivery = f", tls: {mode}" + (f", tls_ca: '{tmp_path / (ca + '.pem')}'" if ca else "")
    async with front(netpair, tmp_path, settings, delivery) as f:
        hop = f.hop
        c = await f.client()
        answer = await send(c, "MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>")
        assert answer.startswith(expected), answer
        if expected == "250":
            [queued] = held(hop)
            assert ("with ESMTPS" in queued) == starttls, queued
        else:
            assert answer.startswith("451 4.4.1 "), answer
            assert hop.queue_files() == []
            assert "TLS failed" in answer or "does not offer STARTTLS" in answer
