"""Message checks without rspamd: the policy's scanner block and five switches, the settings each
policy sends, reading rspamd's answers, the verdicts and the log lines (SPEC.md section 8).

The real rspamd, clamd and DNS are in tests/e2e/test_scanner_rspamd.py; here a local HTTP
server plays rspamd's faults."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from netpolicy.model import PolicyError, parse_policy
from netpolicy.model.effective import effective_policy
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.scanner import Checks, RspamdClient, ScanEnvelope, ScanError, ScanStats, _parse
from netpolicy.smtp.spool import ByteBudget, Spool
from tests.support.rspamd import FAULTS, FakeRspamd

POLICY = """\
version: 1
listeners:
  - name: In
    address: 127.0.0.1
    port: 2525
    hat: [{group: ALL, policy: ACCEPTED}]
    rat: [{recipient: ALL, action: accept}]
    defaults: {virus_check: true, spf: true}
mail_flow_policies:
  ACCEPTED: {behavior: accept, spam_check: true, spf: false}
  PLAIN: {behavior: accept}
"""
SCANNER = "scanner: {rspamd: 'http://127.0.0.1:11333'}\n"


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yml")
    return [str(p) for p in info.value.problems]


def test_checks_resolve_policy_then_listener_defaults_then_off() -> None:
    policy = parse_policy(POLICY + SCANNER)
    listener = policy.listeners[0]
    accepted = effective_policy("ACCEPTED", policy.mail_flow_policies["ACCEPTED"], listener.defaults)
    plain = effective_policy("PLAIN", policy.mail_flow_policies["PLAIN"], listener.defaults)
    assert Checks.of(accepted) == Checks(spam=True, virus=True, spf=False, dkim=False, dmarc=False)
    assert Checks.of(plain) == Checks(spam=False, virus=True, spf=True, dkim=False, dmarc=False)
    nothing = parse_policy(POLICY.replace("    defaults: {virus_check: true, spf: true}\n", "") + SCANNER)
    assert not effective_policy("PLAIN", nothing.mail_flow_policies["PLAIN"], nothing.listeners[0].defaults).scans


def test_checks_without_a_scanner_block_are_errors_at_their_lines() -> None:
    assert errors(POLICY) == [
        "p.yml:10: spam_check needs a scanner block (where rspamd is)",
        "p.yml:8: virus_check needs a scanner block (where rspamd is)",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("  PLAIN: {behavior: accept, dkim: 1}\n", "p.yml:11: mail_flow_policies.PLAIN.dkim: Input should be a valid boolean"),
    ("  PLAIN: {behavior: accept, dmarc: 'yes'}\n", "p.yml:11: mail_flow_policies.PLAIN.dmarc: Input should be a valid boolean"),
])
def test_check_switches_are_strict_booleans(text: str, message: str) -> None:
    assert message in errors(POLICY.replace("  PLAIN: {behavior: accept}\n", text) + SCANNER)


@pytest.mark.parametrize(("scanner", "message"), [
    ("{rspamd: 'http://127.0.0.1:11333/checkv2'}", "is not an http://host:port URL"),
    ("{rspamd: 'https://127.0.0.1:11333'}", "is not an http://host:port URL"),
    ("{rspamd: 'http://user:pw@127.0.0.1:11333'}", "is not an http://host:port URL"),
    ("{rspamd: 'http://127.0.0.1:99999'}", "is not an http://host:port URL"),
    ("{rspamd: 'http://127.0.0.1', timeout: 0}", "scanner.timeout: Input should be greater than 0"),
    ("{rspamd: 'http://127.0.0.1', on_error: discard}", "scanner.on_error: Input should be 'tempfail' or 'accept'"),
    ("{rspamd: 'http://127.0.0.1', virus_symbols: [clam_virus]}", "is not an rspamd symbol name"),
    ("{rspamd: 'http://127.0.0.1', tls: true}", "unknown key 'tls'"),
])
def test_scanner_block_errors(scanner: str, message: str) -> None:
    found = errors(POLICY + f"scanner: {scanner}\n")
    assert any(message in problem and problem.startswith("p.yml:12:") for problem in found), found


def test_scanner_block_accepts_host_names_and_ipv6() -> None:
    for url in ("http://rspamd.example.test:11333", "http://[::1]:11333/", "http://127.0.0.1"):
        assert parse_policy(POLICY + f"scanner: {{rspamd: '{url}'}}\n").scanner is not None


@pytest.mark.parametrize(("checks", "settings"), [
    (Checks(spam=True), {"groups_disabled": ["antivirus", "dkim", "dmarc", "spf"]}),
    (Checks(spam=True, virus=True, spf=True, dkim=True, dmarc=True), {"groups_disabled": []}),
    (Checks(virus=True), {"groups_enabled": ["antivirus"]}),
    (Checks(dkim=True), {"groups_enabled": ["dkim"]}),
    # DMARC is computed from the SPF and DKIM results: asking for it runs both
    (Checks(dmarc=True), {"groups_enabled": ["dkim", "dmarc", "spf"]}),
    (Checks(spam=True, dmarc=True), {"groups_disabled": ["antivirus"]}),
])
def test_settings_run_only_the_checks_asked_for(checks: Checks, settings: dict[str, list[str]]) -> None:
    assert json.loads(checks.settings()) == settings


@pytest.mark.parametrize("answer", [
    b"not json",
    b"[]",
    b'{"score": 1.0, "symbols": {}}',
    b'{"action": "discard", "score": 1.0, "symbols": {}}',
    b'{"action": "reject", "score": "high", "symbols": {}}',
    b'{"action": "reject", "score": true, "symbols": {}}',
    b'{"action": "reject", "score": 1.0, "symbols": []}',
    b'{"action": "reject", "score": 1.0, "symbols": {"X": {"options": "one"}}}',
    b'{"action": "reject", "score": 1.0, "symbols": {"X": {"options": [1]}}}',
])
def test_answers_that_are_not_rspamds_are_scan_errors(answer: bytes) -> None:
    with pytest.raises(ScanError):
        _parse(answer)


def rspamd_answer(action: str = "no action", score: float = 0.0, symbols: dict[str, list[str]] | None = None,
                  smtp_message: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"action": action, "score": score,
                            "symbols": {name: {"name": name, "options": options} for name, options in (symbols or {}).items()}}
    if smtp_message is not None:
        data["messages"] = {"smtp_message": smtp_message}
    return data


class ScriptedRspamd(RspamdClient):
    """The client with rspamd's answer given: the verdict logic alone."""

    def __init__(self, answer: dict[str, Any], **scanner: Any) -> None:
        from netpolicy.model.policy import Scanner

        super().__init__(Scanner(rspamd="http://127.0.0.1:1", **scanner))
        self.answer = answer

    async def _ask(self, *args: Any) -> Any:
        return _parse(json.dumps(self.answer).encode())


ENVELOPE = ScanEnvelope(7, "198.51.100.9", "mail.x.test", None, "a@x.test", ["b@example.test"], "mx.example.test")


async def judge(answer: dict[str, Any], checks: Checks) -> tuple[Any, list[str]]:
    log = io.StringIO()
    client = ScriptedRspamd(answer)
    maillog = MailLog(stream=log)
    verdict = await client.check(checks, ENVELOPE, Spool(ByteBudget(1 << 20)), maillog)
    maillog.flush()
    return verdict, [line for line in log.getvalue().splitlines() if line]


async def test_a_virus_wins_over_spam_and_is_554() -> None:
    verdict, lines = await judge(rspamd_answer("reject", 20.0, {"CLAM_VIRUS": ["Eicar-Signature"]}), Checks(spam=True, virus=True))
    assert str(verdict.reply) == "554 5.7.0 Message rejected: virus Eicar-Signature"
    assert lines == ["MID 7 using engine: rspamd spam positive score 20.00 action reject",
                     "MID 7 antivirus positive 'Eicar-Signature'",
                     "MID 7 rejected by message checks: 554 5.7.0 Message rejected: virus Eicar-Signature"]


@pytest.mark.parametrize(("action", "reply", "headers"), [
    ("reject", "550 5.7.1 Message rejected as spam", b""),
    ("soft reject", "451 4.7.1 Try again later", b""),
    ("greylist", "451 4.7.1 Try again later", b""),
    ("add header", None, b"X-Spam: Yes\r\nX-Spam-Score: 9.50\r\n"),
    ("rewrite subject", None, b"X-Spam: Yes\r\nX-Spam-Score: 9.50\r\n"),
    ("no action", None, b""),
])
async def test_spam_actions_map_to_spec_replies(action: str, reply: str | None, headers: bytes) -> None:
    verdict, _ = await judge(rspamd_answer(action, 9.5), Checks(spam=True))
    assert (None if verdict.reply is None else str(verdict.reply), verdict.headers) == (reply, headers)


async def test_rspamds_smtp_message_is_used_made_printable() -> None:
    verdict, _ = await judge(rspamd_answer("reject", 16.0, smtp_message="Spam\r\n250 ok"), Checks(spam=True))
    assert str(verdict.reply) == "550 5.7.1 Spam??250 ok"


async def test_without_spam_check_the_action_is_not_obeyed() -> None:
    verdict, lines = await judge(rspamd_answer("reject", 15.0, {"GTUBE": []}), Checks(virus=True))
    assert verdict.reply is None
    assert lines == ["MID 7 antivirus negative"]


async def test_authentication_results_carry_only_tokens() -> None:
    """A signature domain is the sender's text: one with a CR LF or a semicolon is left out of
    the header and the log instead of ending them."""
    answer = rspamd_answer(symbols={"R_SPF_SOFTFAIL": [], "R_DKIM_ALLOW": ["x.test:s=sel1", "evil\r\nX-Injected: 1:s=a;b"],
                                    "DMARC_POLICY_QUARANTINE": ["x.test : No valid SPF", "quarantine"]})
    verdict, lines = await judge(answer, Checks(spf=True, dkim=True, dmarc=True))
    assert verdict.reply is None
    assert verdict.headers == (b"Authentication-Results: mx.example.test;\r\n\tspf=softfail smtp.mailfrom=a@x.test;\r\n"
                               b"\tdkim=pass header.d=x.test header.s=sel1;\r\n\tdkim=pass;\r\n"
                               b"\tdmarc=fail (p=quarantine) header.from=x.test\r\n")
    assert lines == ["MID 7 SPF: mailfrom identity a@x.test SoftFail",
                     "MID 7 DKIM: pass signature verified (d=x.test s=sel1)",
                     "MID 7 DKIM: pass signature verified (d=? s=?)",
                     "MID 7 DMARC: Verification failed (domain x.test policy quarantine)"]


async def test_no_results_are_none() -> None:
    verdict, lines = await judge(rspamd_answer(), Checks(spf=True, dkim=True, dmarc=True))
    assert verdict.headers == b"Authentication-Results: mx.example.test;\r\n\tspf=none smtp.mailfrom=a@x.test;\r\n\tdkim=none;\r\n\tdmarc=none\r\n"
    assert lines == ["MID 7 SPF: mailfrom identity a@x.test None", "MID 7 DKIM: none no signature", "MID 7 DMARC: none"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_faults_are_451_with_tempfail_and_pass_with_accept(fault: str) -> None:
    for on_error, reply in (("tempfail", "451 4.7.1 Message checks unavailable, try again later"), ("accept", None)):
        from netpolicy.model.policy import Scanner

        async with FakeRspamd(fault) as fake:
            client = RspamdClient(Scanner(rspamd=fake.url, timeout=0.3, on_error=on_error))
            spool = Spool(ByteBudget(1 << 20))
            spool.write(b"Subject: x\r\n\r\nhello\r\n")
            log = io.StringIO()
            try:
                verdict = await client.check(Checks(virus=True), ENVELOPE, spool, MailLog(stream=log))
            finally:
                await client.close()
        assert (None if verdict.reply is None else str(verdict.reply)) == reply
        assert verdict.outcome == f"error-{'tempfailed' if on_error == 'tempfail' else 'accepted'}"
        assert "message checks failed" in log.getvalue()


async def test_no_scanner_block_is_a_fault_not_a_pass() -> None:
    """A session decided under a policy with checks, scanning after a reload removed the
    scanner block: the message is not passed on unscanned."""
    verdict = await RspamdClient().check(Checks(spam=True), ENVELOPE, Spool(ByteBudget(1 << 20)), MailLog(stream=io.StringIO()))
    assert str(verdict.reply) == "451 4.7.1 Message checks unavailable, try again later"


def test_latency_histogram_is_cumulative() -> None:
    stats = ScanStats()
    for outcome, seconds in (("clean", 0.004), ("clean", 0.03), ("virus", 0.03), ("error-tempfailed", 100.0)):
        stats.observe(outcome, seconds)
    buckets = dict(stats.cumulative())
    assert (buckets["0.005"], buckets["0.025"], buckets["0.05"], buckets["60.0"], buckets["+Inf"]) == (1, 1, 3, 3, 4)
    assert stats.verdicts == {"clean": 2, "virus": 1, "error-tempfailed": 1}


def test_prepended_headers_come_first_and_go_with_discard() -> None:
    spool = Spool(ByteBudget(1 << 20), threshold=8)  # spooled to a file
    spool.write(b"Received: x\r\n\r\nbody\r\n")
    spool.prepend(b"X-Spam: Yes\r\n")
    assert b"".join(spool.blocks()) == b"X-Spam: Yes\r\nReceived: x\r\n\r\nbody\r\n"
    spool.discard()
    assert b"".join(spool.blocks()) == b""


def test_the_example_runs_the_checks_its_comments_say() -> None:
    from pathlib import Path

    from netpolicy.model import load_policy

    policy = load_policy(Path(__file__).parents[2] / "examples" / "scanner.yml")
    defaults = policy.listeners[0].defaults
    checks = {name: Checks.of(effective_policy(name, mfp, defaults)) for name, mfp in policy.mail_flow_policies.items()}
    assert checks["ACCEPTED"] == Checks(spam=True, virus=True, spf=True, dkim=True, dmarc=True)
    assert checks["TRUSTED"] == Checks(spam=False, virus=True, spf=True, dkim=True, dmarc=True)
    assert checks["RELAYED"] == Checks(virus=True)


async def test_the_request_carries_the_envelope_and_the_held_message() -> None:
    """rspamd's protocol: one Rcpt header per recipient, <> for the null sender, "unknown" for
    an unverified host, the MID as Queue-Id, and the message with its length; a control
    character in the client's HELO does not reach the header."""
    from netpolicy.model.policy import Scanner

    text = b"Received: from x\r\n\tby mx\r\nSubject: x\r\n\r\n" + b"y" * 300_000 + b"\r\n"
    spool = Spool(ByteBudget(1 << 20))
    spool.write(text)
    envelope = ScanEnvelope(9, "198.51.100.9", "bad\x01helo", None, "", ["a@example.test", "b@example.test"], "mx.example.test")
    async with FakeRspamd("clean") as fake:
        client = RspamdClient(Scanner(rspamd=fake.url))
        try:
            verdict = await client.check(Checks(spam=True), envelope, spool, MailLog(stream=io.StringIO()))
        finally:
            await client.close()
    assert verdict.outcome == "clean"
    [(head, body)] = fake.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /checkv2 HTTP/1.1"
    fields = [tuple(line.split(": ", 1)) for line in lines[1:] if ": " in line]
    for field in [("IP", "198.51.100.9"), ("Helo", "bad?helo"), ("Hostname", "unknown"), ("From", "<>"),
                  ("Rcpt", "a@example.test"), ("Rcpt", "b@example.test"), ("Queue-Id", "9"),
                  ("Settings", '{"groups_disabled": ["antivirus", "dkim", "dmarc", "spf"]}'), ("Content-Length", str(len(text)))]:
        assert field in fields
    assert body == text


def test_serve_metrics_export_scans_by_verdict_and_the_latency_histogram() -> None:
    from prometheus_client import generate_latest

    from netpolicy.daemon.metrics import DaemonView, Metrics

    view = DaemonView()
    view.scans.observe("clean", 0.02)
    view.scans.observe("virus", 0.3)
    text = generate_latest(Metrics(view).registry).decode()
    assert 'netpolicy_scans_total{verdict="clean"} 1.0' in text
    assert 'netpolicy_scans_total{verdict="virus"} 1.0' in text
    assert 'netpolicy_scan_seconds_bucket{le="0.025"} 1.0' in text
    assert 'netpolicy_scan_seconds_bucket{le="+Inf"} 2.0' in text
    assert "netpolicy_scan_seconds_count 2.0" in text


@pytest.mark.parametrize(("address", "checks"), [
    ("198.51.100.7", ["spam_check", "virus_check", "spf", "dkim", "dmarc"]),  # ALL -> ACCEPTED: the defaults
    ("127.0.0.10", ["virus_check", "spf", "dkim", "dmarc"]),  # WHITELIST -> TRUSTED
    ("127.0.0.20", ["virus_check"]),  # RELAYLIST -> RELAYED
    ("192.0.2.1", None),  # BLACKLIST -> tcprefuse: no message ever reaches DATA
])
def test_trace_shows_which_checks_a_policy_runs(address: str, checks: list[str] | None) -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "scanner.yml"
    proc = subprocess.run([sys.executable, "-m", "netpolicy", "trace", "-p", str(example), address, "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout).get("checks") == checks
