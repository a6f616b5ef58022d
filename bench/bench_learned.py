"""Learned refusals under a flood (issue 12), measured in one run inside namespaces this script
creates: HOSTS DNS-listed hosts (TCPREFUSE by ``dnslist[bl.test]``) connect ROUNDS times each,
round after round, CONCURRENCY connections at a time;

- the share of connections refused at SYN (ECONNREFUSED: learned into the kernel) against
  those that reached serve (handshake, then RST); goal >= 90%;
- serve's CPU time (utime+stime from /proc) for the flood with ``learn_refusals: 3600`` against
  the same flood with ``learn_refusals: 0``, and their ratio.

The hosts are 10.251.0.0/22 in the client namespace (a local route: any of its addresses can be
bound) routed from the server; the DNS list is the test's DNS server on 127.0.0.1:53 in the
server namespace, answering with TTL 300 (SPEC 7: learned for min(TTL, learn_refusals)).

Usage: python bench/bench_learned.py [HOSTS [ROUNDS]]   (default 1000 10; bounded, test addresses only)
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netpolicy.kernel import select_backend  # noqa: E402
from tests.support.dns_server import DnsServer, Record, Zone, dnslist_name, resolv_conf  # noqa: E402
from tests.support.netns import NetPair, net_pair  # noqa: E402
from tests.support.serve import NETPOLICY, Served  # noqa: E402
from tests.support.serve_policy import PORT  # noqa: E402

HOSTS_NET = ipaddress.ip_network("10.251.0.0/22")
CONCURRENCY = 32
TTL = 300

POLICY = """\
version: 1
learn_refusals: {learn}
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    hat:
      - {{group: BLACKLIST, policy: BLOCKED}}
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: ALL, action: accept}}
    delivery: {{maildir: {maildir}}}
sender_groups:
  BLACKLIST: ["dnslist[bl.test]"]
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
"""

# Runs in the client namespace: ROUNDS rounds over every host, CONCURRENCY connections at once.
FLOOD = """
import asyncio, json, socket, sys, time
dest, port, rounds, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hosts = sys.argv[5:]
outcomes = {"refused": 0, "reset": 0, "other": 0}
others = {}

def other(what):
    outcomes["other"] += 1
    others[what] = others.get(what, 0) + 1

async def one(source, gate):
    loop = asyncio.get_running_loop()
    async with gate:
        with socket.socket() as sock:
            sock.setblocking(False)
            sock.bind((source, 0))
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (dest, port)), 5)
            except ConnectionRefusedError:
                outcomes["refused"] += 1
                return
            except ConnectionResetError:  # serve's RST raced the completion of the handshake
                outcomes["reset"] += 1
                return
            except (OSError, asyncio.TimeoutError) as exc:
                other("connect: " + type(exc).__name__)
                return
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 64), 5)
            except ConnectionResetError:
                outcomes["reset"] += 1
                return
            except (OSError, asyncio.TimeoutError) as exc:
                other("recv: " + type(exc).__name__)
                return
            if data:
                other("recv: " + data[:3].decode(errors="replace"))
            else:
                other("recv: closed")

async def main():
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one(h, gate) for h in hosts))
    outcomes["wall"] = time.perf_counter() - started

asyncio.run(main())
outcomes["others"] = others
print(json.dumps(outcomes))
"""


def cpu_seconds(pid: int, task: int | None = None) -> float:
    """utime+stime of process ``pid`` (all its threads), or of its thread ``task``."""
    path = f"/proc/{pid}/task/{task}/stat" if task is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood_once(pair: NetPair, tmp: Path, hosts: list[str], rounds: int, learn: int) -> dict[str, Any]:
    """One serve with ``learn_refusals: learn``, one flood; its outcomes, wall time and serve's CPU."""
    served = Served(pair, tmp)
    served.write_policy(text=POLICY.format(learn=learn, address=pair.server_v4, port=PORT, maildir=tmp / "maildir"))
    served.launch([NETPOLICY, "serve", "-p", str(served.policy), "--mail-log", str(served.mail_log)])
    try:
        pid = served.proc.pid
        before, loop_before = cpu_seconds(pid), cpu_seconds(pid, pid)
        out = pair.client.popen([sys.executable, "-c", FLOOD, pair.server_v4, str(PORT), str(rounds), str(CONCURRENCY), *hosts],
                                stdout=subprocess.PIPE)
        stdout, _ = out.communicate(timeout=600)
        result: dict[str, Any] = json.loads(stdout)
        result["cpu"] = cpu_seconds(pid) - before
        result["loop_cpu"] = cpu_seconds(pid, pid) - loop_before  # the event loop's thread
        backend = pair.server.call(select_backend)
        result["learned"] = len(pair.server.call(backend.learned))
    finally:
        served.stop()
    return result


def main() -> None:
    n_hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    hosts = [str(a) for a in list(HOSTS_NET.hosts())[:n_hosts]]
    with net_pair() as pair, tempfile.TemporaryDirectory(prefix="bench_learned") as tmp:
        pair.client.exec(["ip", "route", "add", "local", str(HOSTS_NET), "dev", "lo"])
        pair.server.exec(["ip", "route", "add", str(HOSTS_NET), "dev", pair.server_if])
        dns = DnsServer("127.0.0.1", 53, netns=pair.server)
        dns.load(Zone("bl.test", [Record(dnslist_name(h, "bl.test"), "A", "127.0.0.2", ttl=TTL) for h in hosts]))
        with dns, resolv_conf(pair.server, "127.0.0.1"):
            results = {}
            for learn in (3600, 0):
                run_dir = Path(tmp) / f"learn{learn}"
                run_dir.mkdir()
                results[learn] = flood_once(pair, run_dir, hosts, rounds, learn)
    total = n_hosts * rounds
    print(f"{n_hosts} DNS-listed TCPREFUSE hosts x {rounds} connections, {CONCURRENCY} at a time (TTL {TTL} s)")
    for learn, r in results.items():
        share = r["refused"] / total
        print(f"  learn_refusals {learn:>4}: refused at SYN {r['refused']:>6} ({share:6.1%}), reached serve {r['reset']:>6},"
              f" other {r['other']:>3} {r['others'] or ''}; wall {r['wall']:6.2f} s; serve CPU {r['cpu']:6.2f} s (event loop {r['loop_cpu']:.2f}); learned {r['learned']:.0f}")
    on, off = results[3600], results[0]
    print(f"  serve CPU, learning on / off: {on['cpu']:.2f} / {off['cpu']:.2f} s = {on['cpu'] / off['cpu']:.2f}"
          f"  (goal: >= 90% refused at SYN: {'met' if on['refused'] / total >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
