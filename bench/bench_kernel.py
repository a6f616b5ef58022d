"""Kernel-layer figures, measured in network namespaces this script creates and deletes.

    sudo .venv/bin/python bench/bench_kernel.py [--backend nftables|iptables|both] [--rounds N]

Prints, per backend:
- apply time of a plan with 10k / 100k / 1M refused entries into an empty kernel (95% single
  hosts, 5% networks, as in real blocklists; goals: 100k < 1 s, 1M < 10 s);
- the time to apply a plan differing by one address from the 1M one already applied (the
  incremental path: goal < 50 ms), for a single host and for a network;
- accepted-host connects/s to a listener with 1M entries against one with none, measured side
  by side (two server namespaces, alternating 1-second windows; goal: ratio >= 0.9);
- the time a fresh process (no record: ``netpolicy diff``, a restarted serve) takes to diff a
  plan of 1M networks, all in the interval set on nftables (goal: < 10 s).

Addresses: refused entries in 10.0.0.0/9 and 10.240.0.0/12; the connect test uses 10.201.0.0/24
and 10.202.0.0/24, which the sets do not hold.
Every loop is bounded; nothing outside the script's namespaces is touched.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netpolicy.kernel import select_backend  # noqa: E402
from netpolicy.kernel.base import Backend  # noqa: E402
from netpolicy.model.intervals import Interval  # noqa: E402
from netpolicy.model.plan import KernelPlan, ListenerPlan  # noqa: E402
from tests.support.netns import Netns, net_pair, run  # noqa: E402

PORT = 2525
SERVER_CPU = 1 if (os.cpu_count() or 1) > 1 else 0


def entries(n: int) -> tuple[Interval, ...]:
    """``n`` refuse entries, sorted and already merged: even hosts of 10.0.0.0/9 and every
    other /30 of 10.240.0.0/12 (so neighbours never merge)."""
    nets = n // 20
    hosts = n - nets
    base_h, base_n = 10 << 24, (10 << 24) | (240 << 16)
    out = [Interval(4, base_h + 2 * i, base_h + 2 * i) for i in range(hosts)]
    out += [Interval(4, base_n + 8 * i, base_n + 8 * i + 3) for i in range(nets)]
    return tuple(out)


def plan(address: str, refuse: tuple[Interval, ...], generation: str) -> KernelPlan:
    return KernelPlan(generation, (ListenerPlan("Bench", address, PORT, True, refuse),))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_apply(ns: Netns, backend: Backend, address: str, sizes: list[int]) -> dict[int, tuple[Interval, ...]]:
    made = {}
    for n in sizes:
        ns.call(backend.flush)
        refuse = entries(n)
        made[n] = refuse
        fresh = ns.call(lambda: select_backend(backend.name))  # nothing cached: a cold apply
        seconds = ns.call(lambda: timed(lambda: fresh.apply(plan(address, refuse, f"a{n}"))))
        print(f"  apply {n:>9,} entries into an empty kernel: {seconds:7.3f} s", flush=True)
    return made


def networks(n: int) -> tuple[Interval, ...]:
    """``n`` /30 networks, every other one of 10.0.0.0/8 (a plan of networks only)."""
    return tuple(Interval(4, (10 << 24) + 8 * i, (10 << 24) + 8 * i + 3) for i in range(n))


def bench_fresh_diff(ns: Netns, backend: Backend, address: str, n: int) -> None:
    refuse = networks(n)
    ns.call(lambda: backend.apply(plan(address, refuse, "nets")))
    fresh = ns.call(lambda: select_backend(backend.name))
    start = time.perf_counter()
    found = ns.call(lambda: fresh.diff(plan(address, refuse, "nets")))
    print(f"  fresh diff of a plan of {n:,} networks: {time.perf_counter() - start:7.3f} s "
          f"({'in sync' if found.in_sync else 'NOT in sync'})", flush=True)
    ns.call(backend.flush)


def bench_updates(ns: Netns, backend: Backend, address: str, refuse: tuple[Interval, ...], rounds: int) -> None:
    ns.call(lambda: backend.apply(plan(address, refuse, "base")))
    for label in ("host", "network"):
        times = []
        for i in range(rounds):
            entry = Interval.from_cidr(f"192.0.2.{i * 4}/32" if label == "host" else f"192.0.2.{i * 4}/30")
            with_one = tuple(sorted((*refuse, entry)))
            times.append(ns.call(lambda: timed(lambda: backend.apply(plan(address, with_one, f"u{label}{i}")))))
            times.append(ns.call(lambda: timed(lambda: backend.apply(plan(address, refuse, "base")))))
        ms = sorted(t * 1000 for t in times)
        print(f"  one-{label} update on {len(refuse):,} entries: median {statistics.median(ms):6.1f} ms, "
              f"max {ms[-1]:6.1f} ms ({len(ms)} applies, adding and removing)", flush=True)


ACCEPT_LOOP = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen(1024)
print("ready", flush=True)
while True:
    sock.accept()[0].close()
"""


class Accepter:
    """A listener accepting and closing connections, in its own process in a server namespace
    (so it never competes with the client loop for the interpreter lock)."""

    def __init__(self, ns: Netns, address: str) -> None:
        pin = ["taskset", "-c", str(SERVER_CPU)] if SERVER_CPU else []
        self.proc = ns.popen([*pin, sys.executable, "-c", ACCEPT_LOOP, address, str(PORT)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _link(client: Netns, server: Netns, n: int) -> tuple[str, str]:
    """A veth between the client and one server namespace: (client address, server address)."""
    cif, sif = f"vb{n}{client.name[2:7]}", f"vs{n}{server.name[2:7]}"
    run(["ip", "link", "add", cif, "netns", client.name, "type", "veth", "peer", "name", sif, "netns", server.name])
    caddr, saddr = f"10.{200 + n}.0.2", f"10.{200 + n}.0.1"
    for ns, ifname, addr in ((client, cif, caddr), (server, sif, saddr)):
        ns.exec(["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        ns.exec(["ip", "link", "set", ifname, "up"])
    return caddr, saddr


def _alternate(targets: list[tuple[str, str]], seconds: float) -> list[tuple[float, float]]:
    """Connect (then reset: no TIME_WAIT pile-up) to each target in turn for ``seconds``.

    Per target: (connects/s of the client loop, as 1 / median time of one whole iteration:
    socket, bind, connect, close), and the 10th-percentile time of connect() itself (SYN out,
    SYN-ACK back: the kernel path the refuse rules sit on). Alternating connection by connection
    makes load changes on this shared 2-core machine hit both targets alike; medians and low
    percentiles ignore the stalls such load causes.
    """
    if SERVER_CPU:  # the client on one CPU, both accepting processes on the other: symmetric
        os.sched_setaffinity(0, {0})
    linger = struct.pack("ii", 1, 0)
    loops: list[list[float]] = [[] for _ in targets]
    connects: list[list[float]] = [[] for _ in targets]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for i, (source, dest) in enumerate(targets):
            begin = time.perf_counter()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.bind((source, 0))
                start = time.perf_counter()
                sock.connect((dest, PORT))
                connects[i].append(time.perf_counter() - start)
            loops[i].append(time.perf_counter() - begin)
    return [(1 / statistics.median(lp), sorted(c)[len(c) // 10]) for lp, c in zip(loops, connects)]


def bench_connects(backend_name: str, refuse: tuple[Interval, ...], rounds: int) -> None:
    """One client namespace linked to two server namespaces, one without any ruleset and one
    with ``refuse`` applied, connected to alternately from addresses the sets do not hold."""
    client, empty, full = Netns.create(), Netns.create(), Netns.create()
    accepters: list[Accepter] = []
    executor = client.executor()
    try:
        targets = [_link(client, empty, 1), _link(client, full, 2)]
        backend = full.call(lambda: select_backend(backend_name))
        full.call(lambda: backend.apply(plan(targets[1][1], refuse, "load")))
        accepters = [Accepter(empty, targets[0][1]), Accepter(full, targets[1][1])]
        executor.submit(_alternate, targets, 0.5).result()  # warm up
        runs = [executor.submit(_alternate, targets, 2.0).result() for _ in range(rounds)]
    finally:
        for accepter in accepters:
            accepter.close()
        executor.shutdown()
        for ns in (client, empty, full):
            ns.delete()
    rate = [statistics.median(r[i][0] for r in runs) for i in (0, 1)]
    syn = [statistics.median(r[i][1] for r in runs) * 1e6 for i in (0, 1)]
    print(f"  accepted-host connects/s: no ruleset {rate[0]:7.0f}/s, {len(refuse):,} entries {rate[1]:7.0f}/s, "
          f"ratio {rate[1] / rate[0]:.3f}", flush=True)
    print(f"  accepted-host connect() time, 10th percentile: no ruleset {syn[0]:5.1f} us, "
          f"{len(refuse):,} entries {syn[1]:5.1f} us, ratio (none/entries) {syn[0] / syn[1]:.3f} "
          f"(medians of {rounds} runs of 2 s, connections alternating)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["nftables", "iptables", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5, help="update and connect-rate repetitions")
    parser.add_argument("--max", type=int, default=1_000_000, help="largest plan (default 1M)")
    args = parser.parse_args()
    sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= args.max]
    for name in (["nftables", "iptables"] if args.backend == "both" else [args.backend]):
        print(f"backend {name}", flush=True)
        with net_pair() as pair:
            try:
                backend = pair.server.call(lambda: select_backend(name))
            except Exception as exc:  # noqa: BLE001 - report and go on with the other backend
                print(f"  unavailable: {exc}")
                continue
            made = bench_apply(pair.server, backend, pair.server_v4, sizes)
            bench_updates(pair.server, backend, pair.server_v4, made[sizes[-1]], args.rounds)
            bench_fresh_diff(pair.server, backend, pair.server_v4, sizes[-1])
        bench_connects(name, made[sizes[-1]], args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
