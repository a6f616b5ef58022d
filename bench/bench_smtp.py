"""SMTP throughput: netpolicy's listener against bare aiosmtpd and Postfix, in one run.

    sudo .venv/bin/python bench/bench_smtp.py [-m 5000] [-s 20] [-l 2048] [--rounds 3] [--workers N]

Every server listens on loopback and is driven by Postfix's ``smtp-source -s S -l L -m M``
(one message per connection, S sessions in parallel). All servers run side by side, each in its
own process tree, and are measured in turn, ``--rounds`` times; the medians are reported:

- ``smtp-sink``: Postfix's C sink that discards everything (the ceiling of the machine);
- ``aiosmtpd``: bare aiosmtpd 1.4.6 on asyncio, a handler answering 250 (no policy, no disk);
- ``postfix``: a private Postfix instance (tests/support/postfix.py, needs root) with a real
  queue (fsync) and the discard transport;
- ``netpolicy``: ``SmtpListener`` with the example policy and Maildir delivery (fsync of the
  file and of ``new/``), mail log to a file; again on uvloop when it is installed. Every message
  is counted in its Maildir: a benchmark that lost mail would be meaningless.
- with ``--workers N``, the real ``netpolicy serve`` on the example policy (kernel off: run
  without CAP_NET_ADMIN, the host's ruleset is never touched; the real resolver, whose
  negative answers for 127.0.0.1 are cached): ``serve x1`` on in-memory counters, ``serve x1
  redis`` and ``serve xN redis`` sharing the counters through a real redis-server on loopback,
  whose CPU counts with theirs.
- ``netpolicy->postfix``: the deployment of SPEC.md section 9, the same listener relaying
  before-queue to that Postfix (XCLIENT authorised, so Postfix sees smtp-source's address), on
  uvloop when it is installed, as ``serve`` runs;
  against ``postfix`` measured directly in the same run, its ratio is the cost of the front.
  Its CPU per message is netpolicy's and Postfix's together; every message is counted as
  "delivered to next hop" in its mail log.

Two figures per server: messages per second (what the goals are stated in) and CPU time per
message of the server's whole process tree (Postfix: master and every daemon), which stays
meaningful when the machine is shared with other work and wall-clock rates wander.

The netpolicy server uses a resolver answering at once ("no PTR"), which is what a warm DNS
cache gives the real ``DnsResolver``; there is no DNS server on the bench machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from netpolicy.model.hat import Fact  # noqa: E402
from tests.support.postfix import postfix_instance  # noqa: E402
from tests.support.redis import running_redis  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

SENDER = "bench@sender.test"
RECIPIENT = "rcpt@example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    def greets() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return bool(s.recv(512))  # the banner: the server is really serving

    wait_until(greets, f"a banner on port {port}", timeout=timeout, ignoring=(OSError,))


# --- servers run in child processes (python bench_smtp.py --serve KIND PORT [DIR]) ----------


class _NoDns:
    """Every lookup answered at once, as a warm cache would: no PTR name, listed nowhere."""

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        return Fact(None, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> Fact[bool]:
        return Fact(False, 300.0)

    async def score(self, address: str, reputation: object) -> Fact[float | None]:
        return Fact(None, 300.0)


def serve_netpolicy(port: int, workdir: str, next_hop: str | None = None) -> None:
    from netpolicy.model import load_policy
    from netpolicy.model.hat import build_hat_indexes

    policy = load_policy(os.path.join(ROOT, "examples", "policy.yml"))
    model = policy.listener("IncomingMail")
    sink = {"maildir": None, "next_hop": next_hop} if next_hop else {"maildir": os.path.join(workdir, "maildir")}
    delivery = model.delivery.model_copy(update=sink)
    model = model.model_copy(update={"port": port, "delivery": delivery})
    hat = build_hat_indexes(policy)["IncomingMail"]
    from netpolicy.smtp import SmtpListener
    from netpolicy.smtp.maillog import MailLog

    async def main() -> None:
        listener = SmtpListener(model, hat, _NoDns(), MailLog(os.path.join(workdir, "mail.log")))
        await listener.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_command(port: int, workdir: str, workers: int, url: str | None) -> list[str]:
    """``netpolicy serve`` on the example policy at ``port`` (Maildir and mail log in ``workdir``),
    sharing its counters through ``url`` when given; without CAP_NET_ADMIN, so userland only."""
    import yaml

    with open(os.path.join(ROOT, "examples", "policy.yml")) as f:
        policy = yaml.safe_load(f)
    listener = policy["listeners"][0]
    listener.update(port=port, kernel=False, delivery={"maildir": os.path.join(workdir, "maildir")})
    if url is not None:
        policy["state"] = {"redis": url, "prefix": f"bench{port}:"}
    path = os.path.join(workdir, "policy.yml")
    with open(path, "w") as f:
        yaml.safe_dump(policy, f)
    netpolicy = os.path.join(os.path.dirname(sys.executable), "netpolicy")
    drop = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"] if os.geteuid() == 0 else []
    return [*drop, netpolicy, "serve", "-p", path, "--mail-log", os.path.join(workdir, "mail.log"), "--workers", str(workers),
            "--runtime-file", os.path.join(workdir, "serve.json")]


def serve_aiosmtpd(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(Handler(), hostname="bench"), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the driver ---------------------------------------------------------------------------


@contextlib.contextmanager
def child(args: list[str], port: int, stderr: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` serving on ``port`` (its standard error to the file ``stderr``, when given)."""
    with open(stderr or os.devnull, "ab") as err:
        proc = subprocess.Popen(args, start_new_session=True, stderr=err if stderr else None)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Wall-clock seconds smtp-source needs for ``messages`` (bounded: 300 s)."""
    args = ["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(messages),
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.test", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return elapsed


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its live descendants and the children it has reaped.

    The host is shared (other jobs run beside the bench), so wall-clock rates move with the
    load; CPU per message is the figure that compares the servers' own cost.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


@dataclass
class Server:
    name: str
    port: int
    pid: int
    maildir: str | None = None
    also: int | None = None  # another process tree whose CPU counts (the relay's Postfix)
    mail_log: str | None = None  # relay: count "delivered to next hop" here
    rates: list[float] = field(default_factory=list)
    cpu_per_msg: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_us(self) -> float:
        return statistics.median(self.cpu_per_msg) * 1e6


def run_round(server: Server, args: argparse.Namespace) -> None:
    trees = [server.pid] if server.also is None else [server.pid, server.also]
    before = sum(tree_cpu(pid) for pid in trees)
    elapsed = smtp_source(server.port, args.messages, args.sessions, args.size)
    cpu = sum(tree_cpu(pid) for pid in trees) - before
    server.rates.append(args.messages / elapsed)
    server.cpu_per_msg.append(cpu / args.messages)
    print(f"  {server.name:22s} {args.messages / elapsed:7.0f} msg/s  {cpu / args.messages * 1e6:6.0f} us CPU/msg", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=5000)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    parser.add_argument("-l", "--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3, help="servers are measured in turn, this many times")
    parser.add_argument("--workers", type=int, default=0,
                        help="also measure netpolicy serve: x1 in-memory, x1 and xN (--workers N) on a redis-server")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port = args.serve[0], int(args.serve[1])
        if kind.startswith("netpolicy"):
            if kind.endswith("uvloop"):
                import uvloop

                uvloop.install()
            next_hop = f"127.0.0.1:{args.serve[3]}" if kind.startswith("netpolicy-relay") else None
            serve_netpolicy(port, args.serve[2], next_hop)
        else:
            serve_aiosmtpd(port)
        return 0
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (Debian: apt-get install postfix)", file=sys.stderr)
            return 1
    me = [sys.executable, os.path.abspath(__file__)]
    work = tempfile.mkdtemp(prefix="npbench")
    os.chmod(work, 0o755)  # Postfix daemons run as the postfix user and must reach their dirs
    servers: list[Server] = []
    variants = ["netpolicy"]
    if importlib.util.find_spec("uvloop") is not None:
        variants.append("netpolicy-uvloop")
    try:
        with contextlib.ExitStack() as stack:
            port = free_port()
            sink_user = ["-u", "postfix"] if os.geteuid() == 0 else []
            proc = stack.enter_context(child(["smtp-sink", *sink_user, f"127.0.0.1:{port}", "1024"], port))
            servers.append(Server("smtp-sink", port, proc.pid))
            port = free_port()
            proc = stack.enter_context(child([*me, "--serve", "aiosmtpd", str(port)], port))
            servers.append(Server("aiosmtpd", port, proc.pid))
            if os.geteuid() == 0:
                hop_port = free_port()
                hop = stack.enter_context(postfix_instance(hop_port, settings={"smtpd_authorized_xclient_hosts": "127.0.0.1"}))
                assert hop.master is not None
                servers.append(Server("postfix", hop_port, hop.master))
                port = free_port()
                npdir = os.path.join(work, "relay")
                os.makedirs(npdir)
                relay = "netpolicy-relay-uvloop" if importlib.util.find_spec("uvloop") is not None else "netpolicy-relay"
                proc = stack.enter_context(child([*me, "--serve", relay, str(port), npdir, str(hop_port)], port))
                servers.append(Server("netpolicy->postfix", port, proc.pid, also=hop.master, mail_log=os.path.join(npdir, "mail.log")))
            else:
                print("postfix and the relay run skipped: a private Postfix instance needs root", flush=True)
            for kind in variants:
                port = free_port()
                npdir = os.path.join(work, kind)
                os.makedirs(npdir)
                proc = stack.enter_context(child([*me, "--serve", kind, str(port), npdir], port))
                servers.append(Server(kind, port, proc.pid, maildir=os.path.join(npdir, "maildir", "new")))
            if args.workers:
                store = stack.enter_context(running_redis())
                assert store.process is not None
                for workers, url in ((1, None), (1, store.url), (max(args.workers, 2), store.url)):
                    port = free_port()
                    name = f"serve x{workers}" + (" redis" if url else "")
                    npdir = os.path.join(work, name.replace(" ", "-"))
                    os.makedirs(npdir)
                    proc = stack.enter_context(child(serve_command(port, npdir, workers, url), port,
                                                     stderr=os.path.join(npdir, "serve.err")))
                    servers.append(Server(name, port, proc.pid, maildir=os.path.join(npdir, "maildir", "new"),
                                          also=store.process.pid if url else None))
            for server in servers:  # warm-up: pools, caches, Postfix's processes
                smtp_source(server.port, min(300, args.messages), args.sessions, args.size)
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}: smtp-source -s {args.sessions} -l {args.size} -m {args.messages}", flush=True)
                for server in servers:
                    run_round(server, args)
            expected = args.rounds * args.messages + min(300, args.messages)
            for server in servers:
                if server.maildir is not None:
                    stored = len(os.listdir(server.maildir))
                elif server.mail_log is not None:
                    with open(server.mail_log) as log:
                        stored = sum(line.rstrip().endswith(f"delivered to next hop 127.0.0.1:{hop_port}") for line in log)
                else:
                    continue
                if stored != expected:
                    print(f"{server.name}: LOST MAIL: {stored} stored, {expected} sent", file=sys.stderr)
                    return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.rounds} rounds; every netpolicy message checked in its Maildir or mail log")
    by_name = {s.name: s for s in servers}
    for s in servers:
        print(f"{s.name:22s} {s.rate:7.0f} msg/s  {s.cpu_us:6.0f} us CPU/msg")
    if "netpolicy->postfix" in by_name:
        relay, direct = by_name["netpolicy->postfix"], by_name["postfix"]
        print(f"netpolicy->postfix / postfix: {relay.rate / direct.rate:.2f}x msg/s (the front's cost), "
              f"{relay.cpu_us / direct.cpu_us:.2f}x CPU per message")
    serves = [s for s in servers if s.name.startswith("serve x") and s.name.endswith("redis")]
    if serves and "serve x1" in by_name:
        print(f"serve x1 redis / serve x1: {serves[0].rate / by_name['serve x1'].rate:.2f}x msg/s (goal >= 0.9, "
              "the store's cost)")
    if len(serves) > 1 and "postfix" in by_name:
        print(f"{serves[-1].name} / postfix: {serves[-1].rate / by_name['postfix'].rate:.2f}x msg/s (goal >= 2.0)")
    for s in servers:
        if s.maildir is None:
            continue
        for ref, goal in (("aiosmtpd", 0.8), ("postfix", 1.0)):
            if ref in by_name:
                r = by_name[ref]
                print(f"{s.name} / {ref}: {s.rate / r.rate:.2f}x msg/s (goal >= {goal}), "
                      f"{r.cpu_us / s.cpu_us:.2f}x CPU efficiency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
