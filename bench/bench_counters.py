"""What sharing the counters through Redis costs: msg/s of one listener process, side by side.

    .venv/bin/python bench/bench_counters.py [-m 5000] [-s 20] [-l 2048] [--rounds 3]

Three servers, each one uvloop process serving ``IncomingMail`` of the example policy with
Maildir delivery (the bench_smtp.py server), driven in turn by Postfix's ``smtp-source`` (one
message per connection, so every message costs a connection lease, a recipient window and the
lease's removal):

- ``in-memory``: the listener's own ``InMemoryCounters`` (no state store, as before stores);
- ``no-store``: ``RedisCounters`` of a ``RedisStore`` without ``state`` (what serve runs when the
  policy has no state block: the views answer from the process);
- ``redis``: the same with ``state`` on a real redis-server on loopback (its own address).

Reports the median msg/s and CPU per message (netpolicy's process; the redis-server's CPU per
message apart), and the ratio redis / in-memory against the issue's goal (>= 0.9x).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_smtp import ROOT, Server, child, free_port, run_round, smtp_source, tree_cpu  # noqa: E402

GOAL = 0.9


def serve(kind: str, port: int, workdir: str, url: str | None) -> None:
    from netpolicy.model import load_policy
    from netpolicy.model.hat import build_hat_indexes
    from netpolicy.model.policy import State
    from netpolicy.smtp import SmtpListener
    from netpolicy.smtp.maillog import MailLog
    from netpolicy.smtp.redis_counters import RedisStore
    from tests.support.smtp import FakeResolver

    policy = load_policy(os.path.join(ROOT, "examples", "policy.yml"))
    model = policy.listener("IncomingMail")
    delivery = model.delivery.model_copy(update={"maildir": os.path.join(workdir, "maildir")})
    model = model.model_copy(update={"port": port, "delivery": delivery})
    hat = build_hat_indexes(policy)["IncomingMail"]

    async def main() -> None:
        store = RedisStore()
        await store.configure(State(redis=url) if url else None)
        if url and not store.up:
            raise SystemExit(f"the state store at {url} is not reachable")
        counters = None if kind == "in-memory" else store.counters(model.name)
        listener = SmtpListener(model, hat, FakeResolver(names={}, listed=set()),  # type: ignore[arg-type]
                                MailLog(os.path.join(workdir, "mail.log")), counters=counters)
        await listener.start()
        await asyncio.Event().wait()

    uvloop.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=5000)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    parser.add_argument("-l", "--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port, workdir, *url = args.serve
        serve(kind, int(port), workdir, url[0] if url else None)
        return 0
    if not shutil.which("smtp-source"):
        print("smtp-source is not installed (Debian: apt-get install postfix)", file=sys.stderr)
        return 1
    from tests.support.redis import running_redis

    me = [sys.executable, os.path.abspath(__file__)]
    work = tempfile.mkdtemp(prefix="npbench")
    servers: list[Server] = []
    try:
        with running_redis() as redis, contextlib.ExitStack() as stack:
            assert redis.process is not None
            for kind in ("in-memory", "no-store", "redis"):
                port = free_port()
                workdir = os.path.join(work, kind)
                os.makedirs(workdir)
                url = [redis.url] if kind == "redis" else []
                proc = stack.enter_context(child([*me, "--serve", kind, str(port), workdir, *url], port))
                servers.append(Server(kind, port, proc.pid, maildir=os.path.join(workdir, "maildir", "new")))
            for server in servers:  # warm-up: connection pools, caches
                smtp_source(server.port, min(300, args.messages), args.sessions, args.size)
            redis_cpu: list[float] = []
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}: smtp-source -s {args.sessions} -l {args.size} -m {args.messages}", flush=True)
                for server in servers:
                    before = tree_cpu(redis.process.pid)
                    run_round(server, args)
                    if server.name == "redis":
                        redis_cpu.append((tree_cpu(redis.process.pid) - before) / args.messages)
            for server in servers:
                assert server.maildir is not None
                stored, expected = len(os.listdir(server.maildir)), args.rounds * args.messages + min(300, args.messages)
                if stored != expected:
                    print(f"{server.name}: LOST MAIL: {stored} stored, {expected} sent", file=sys.stderr)
                    return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.rounds} rounds; every message checked in its Maildir")
    for s in servers:
        print(f"{s.name:10s} {s.rate:7.0f} msg/s  {s.cpu_us:6.0f} us CPU/msg")
    print(f"redis-server: {sorted(redis_cpu)[len(redis_cpu) // 2] * 1e6:.0f} us CPU/msg")
    by_name = {s.name: s for s in servers}
    base = by_name["in-memory"]
    for name in ("no-store", "redis"):
        s = by_name[name]
        print(f"{name} / in-memory: {s.rate / base.rate:.2f}x msg/s" + (f" (goal >= {GOAL})" if name == "redis" else "")
              + f", {s.cpu_us / base.cpu_us:.2f}x CPU/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
