"""Scanned SMTP throughput: netpolicy asking rspamd, against Postfix with rspamd as its milter.

    sudo .venv/bin/python bench/bench_scan.py [-m 1000] [-s 20] [--rounds 3]

The peer a mail administrator would otherwise run is Postfix with rspamd's proxy worker in
milter mode (scanning itself) as ``smtpd_milters``; netpolicy asks rspamd's normal worker with
``POST /checkv2`` at the end of DATA. Both ask the same rspamd instance (Debian's, the tests'
configuration: offline, clamd with the EICAR signature behind its antivirus module, the tests'
DNS server for every lookup), one worker each, and both get the same message, a 2 KB ham with
ordinary headers sent by ``smtp-source -F`` (S sessions, one message per connection).

netpolicy runs its listener in a child process on uvloop with every check on (spam, virus, SPF,
DKIM, DMARC: rspamd runs all its rules, as for the milter), Maildir delivery (fsync); Postfix
has its real queue (fsync) and the discard transport. Every netpolicy message is counted in
its Maildir and in rspamd's ``scanned`` counter: a bench that skipped the scan would be
meaningless. A run without checks (the same listener, no scanner asked) gives today's figure
for the "no checks lose nothing" goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_smtp import tree_cpu  # noqa: E402
from tests.support.clamd import Clamd, free_port  # noqa: E402
from tests.support.dns_server import DnsServer  # noqa: E402
from tests.support.postfix import postfix_instance  # noqa: E402
from tests.support.rspamd import Rspamd, loopback, scratch_directory  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

SENDER = "bench@sender.test"
RECIPIENT = "rcpt@example.test"
CHECKS = {"spam_check": True, "virus_check": True, "spf": True, "dkim": True, "dmarc": True}


def ham() -> str:
    """A plain 2 KB message with the headers a real one has (rspamd scores it as no action)."""
    paragraph = ("Thanks for the notes from Tuesday. The schedule for the next release looks fine to me; "
                 "I have moved the review to Thursday so that the whole team can attend. ")
    body = "\n".join(paragraph for _ in range(12))
    return ("From: Bench Sender <bench@sender.test>\nTo: Recipient <rcpt@example.test>\nSubject: release schedule\n"
            f"Date: {formatdate(usegmt=True)}\nMessage-ID: <bench.1@sender.test>\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=us-ascii\n\nHello,\n\n{body}\n\nRegards,\nBench\n")


def policy_text(port: int, maildir: str, scanner: str | None) -> str:
    checks = ", ".join(f"{k}: true" for k in CHECKS) if scanner else ""
    return (f"version: 1\nlisteners:\n  - name: Bench\n    address: 127.0.0.1\n    port: {port}\n    hostname: mx.example.test\n"
            "    kernel: false\n    hat: [{group: ALL, policy: ACCEPTED}]\n"
            "    rat: [{recipient: example.test, action: accept}, {recipient: ALL, action: reject}]\n"
            f"    defaults: {{max_concurrency: 1000, {checks}}}\n    delivery: {{maildir: {maildir}}}\n"
            "mail_flow_policies:\n  ACCEPTED: {behavior: accept}\n"
            + (f"scanner: {{rspamd: '{scanner}', timeout: 30}}\n" if scanner else ""))


class _NoDns:
    """A warm DNS cache: no PTR, no listing (the bench measures the scan, not lookups)."""

    async def verified_hostname(self, address: str) -> object:
        from netpolicy.model.hat import Fact

        return Fact(None, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> object:
        from netpolicy.model.hat import Fact

        return Fact(False, 300.0)

    async def score(self, address: str, reputation: object) -> object:
        from netpolicy.model.hat import Fact

        return Fact(None, 300.0)


def serve(path: str) -> None:
    import uvloop

    from netpolicy.model import load_policy
    from netpolicy.model.hat import build_hat_indexes
    from netpolicy.smtp import SmtpListener
    from netpolicy.smtp.maillog import MailLog
    from netpolicy.smtp.scanner import RspamdClient

    policy = load_policy(path)

    async def main() -> None:
        maillog = MailLog(os.path.join(os.path.dirname(path), "mail.log"))
        listener = SmtpListener(policy.listener("Bench"), build_hat_indexes(policy)["Bench"], _NoDns(), maillog,  # type: ignore[arg-type]
                                scanner=RspamdClient(policy.scanner))
        await listener.start()
        await asyncio.Event().wait()

    uvloop.run(main())


@contextlib.contextmanager
def netpolicy(port: int, workdir: Path, scanner: str | None) -> Iterator[tuple[int, Path]]:
    """netpolicy's listener in a child process: its pid and its Maildir's new/."""
    maildir = workdir / "maildir"
    path = workdir / "policy.yml"
    path.write_text(policy_text(port, str(maildir), scanner))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(path)], start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or _greets(port), f"netpolicy on port {port}", timeout=30)
        yield proc.pid, maildir / "new"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _greets(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def smtp_source(port: int, message: Path, messages: int, sessions: int) -> float:
    args = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-F", str(message),
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.test", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"smtp-source: {proc.stderr.strip() or proc.stdout.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=1000)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if os.geteuid() != 0:
        print("needs root: rspamd, clamd and a private Postfix drop to their own users", file=sys.stderr)
        return 1
    work = scratch_directory("np-bench-scan-")
    message = work / "ham.eml"
    message.write_text(ham())
    warm = min(200, args.messages)
    names = ("netpolicy + rspamd", "postfix + rspamd milter", "netpolicy, no checks")
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in names}  # (server, rspamd) s/msg
    try:
        with contextlib.ExitStack() as stack:
            dns = DnsServer(loopback(0))
            dns.start()
            stack.callback(dns.stop)
            (work / "clamd").mkdir()
            clamd = Clamd(work / "clamd", loopback(1))
            stack.callback(clamd.stop)
            clamd.start()
            rspamd = Rspamd(work / "rspamd", loopback(2), (dns.address, dns.port), (clamd.address, clamd.port), milter=True)
            stack.callback(rspamd.stop)
            started = time.monotonic()
            rspamd.start()
            assert rspamd.proc is not None
            print(f"rspamd up in {time.monotonic() - started:.1f} s", flush=True)
            ports = {name: free_port("127.0.0.1") for name in names}
            (work / "np").mkdir()
            (work / "plain").mkdir()
            scanned_pid, scanned_dir = stack.enter_context(netpolicy(ports[names[0]], work / "np", rspamd.url))
            plain_pid, plain_dir = stack.enter_context(netpolicy(ports[names[2]], work / "plain", None))
            milter = {"smtpd_milters": rspamd.milter_address, "milter_default_action": "tempfail", "milter_protocol": "6"}
            postfix = stack.enter_context(postfix_instance(ports[names[1]], settings=milter))
            pids = {names[0]: scanned_pid, names[1]: postfix.master, names[2]: plain_pid}
            for port in ports.values():  # warm-up: pools, rspamd's caches, Postfix's processes
                smtp_source(port, message, warm, args.sessions)
            before = rspamd.scanned()
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}: smtp-source -s {args.sessions} -m {args.messages} -F ham.eml (2 KB)", flush=True)
                for name, port in ports.items():
                    pid = pids[name]
                    assert pid is not None
                    cpu_before = (tree_cpu(pid), tree_cpu(rspamd.proc.pid))
                    rate = args.messages / smtp_source(port, message, args.messages, args.sessions)
                    used = ((tree_cpu(pid) - cpu_before[0]) / args.messages, (tree_cpu(rspamd.proc.pid) - cpu_before[1]) / args.messages)
                    rates[name].append(rate)
                    cpu[name].append(used)
                    print(f"  {name:26s} {rate:7.0f} msg/s  CPU/msg: server {used[0] * 1e6:6.0f} us, rspamd {used[1] * 1e6:6.0f} us", flush=True)
            scanned = rspamd.scanned() - before
            expected = {scanned_dir: args.rounds * args.messages + warm, plain_dir: args.rounds * args.messages + warm}
            for directory, count in expected.items():
                stored = len(os.listdir(directory))
                if stored != count:
                    print(f"{directory}: {stored} stored, {count} sent", file=sys.stderr)
                    return 1
            if scanned != 2 * args.rounds * args.messages:
                print(f"rspamd scanned {scanned}, expected {2 * args.rounds * args.messages}", file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.rounds} round(s); every netpolicy message in its Maildir, every scan counted by rspamd")
    for name in names:
        server, scanner = (statistics.median(c[i] for c in cpu[name]) * 1e6 for i in (0, 1))
        print(f"{name:26s} {statistics.median(rates[name]):7.0f} msg/s  CPU/msg: server {server:6.0f} us, rspamd {scanner:6.0f} us")
    ratio = statistics.median(rates[names[0]]) / statistics.median(rates[names[1]])
    print(f"netpolicy + rspamd / postfix + rspamd milter: {ratio:.2f}x msg/s (goal >= 1.0)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
