"""serve figures (issue 5), all measured in one run inside namespaces this script creates:

- reload latency: policy file rewritten + SIGHUP -> first connection from the newly blocked
  address refused by the kernel;
- repair latency: ``nft flush ruleset`` in the server namespace -> blocked host refused again
  (reconciler interval 1 s, the default);
- serve's CPU time (utime+stime from /proc) while one blocked host opens N connections, with
  the listener's ``kernel: true`` and then ``kernel: false`` (userland refusal: accept, RST).

Usage: python bench/bench_serve.py [N]   (default 10000; bounded loops, test addresses only)
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.netns import NetPair, net_pair  # noqa: E402
from tests.support.serve import NETPOLICY, Served  # noqa: E402
from tests.support.serve_policy import BLOCKED, LATER, PORT, write_policy  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402


def refused(pair: NetPair, source: str) -> bool:
    """Refused at SYN by the kernel (not: admitted, or reset by userland after the handshake)."""
    try:
        pair.client.connect((pair.server_v4, PORT), source=source, timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def admitted(pair: NetPair, source: str) -> bool:
    """Got the 220 banner."""
    try:
        with pair.client.connect((pair.server_v4, PORT), source=source, timeout=1) as sock:
            return sock.recv(16).startswith(b"220")
    except OSError:
        return False


def serve(pair: NetPair, tmp: Path, kernel: bool) -> Served:
    """serve with the default reconcile interval (1 s), once it said READY=1."""
    s = Served(pair, tmp)
    write_policy(s.policy, pair.server_v4, tmp / "maildir", BLOCKED, kernel=kernel)
    s.launch([NETPOLICY, "serve", "-p", str(s.policy), "--mail-log", str(s.mail_log)])
    return s


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood(pair: NetPair, n: int) -> tuple[float, int]:
    """N connections from the blocked host; returns wall time and how many were refused at SYN."""
    def run() -> tuple[float, int]:
        refused_count = 0
        t0 = time.perf_counter()
        for _ in range(n):
            s = socket.socket()
            s.settimeout(2)
            s.bind((BLOCKED, 0))
            try:
                s.connect((pair.server_v4, PORT))
                s.recv(16)  # userland: RST after the handshake, no banner
            except ConnectionRefusedError:
                refused_count += 1
            except OSError:
                pass
            finally:
                s.close()
        return time.perf_counter() - t0, refused_count
    return pair.client.call(run)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with net_pair() as pair, tempfile.TemporaryDirectory() as tmp:
        pair.add_client_address(BLOCKED)
        pair.add_client_address(LATER)
        s = serve(pair, Path(tmp), kernel=True)
        try:
            reloads = []
            for i in range(5):
                blacklist = f"{BLOCKED}, {LATER}" if i % 2 == 0 else BLOCKED
                write_policy(s.policy, pair.server_v4, Path(tmp) / "maildir", blacklist)
                t0 = time.perf_counter()
                s.proc.send_signal(signal.SIGHUP)
                changed = (lambda: refused(pair, LATER)) if i % 2 == 0 else (lambda: admitted(pair, LATER))
                wait_until(changed, "the reload to reach the kernel", timeout=10, step=0.002)  # 2 ms: figures are tens of ms
                reloads.append(time.perf_counter() - t0)
            repairs = []
            for i in range(5):
                pair.server.exec(["nft", "flush", "ruleset"])
                t0 = time.perf_counter()
                wait_until(lambda: refused(pair, BLOCKED), "the blocked host refused again", timeout=10, step=0.002)
                repairs.append(time.perf_counter() - t0)
                # The repair is over (not only its first element) before the next flush.
                wait_until(lambda: s.stderr_text().count("drift repaired") > i, f"repair {i + 1}'s log line")
            c0 = cpu_seconds(s.proc.pid)
            wall_k, refused_k = flood(pair, n)
            cpu_k = cpu_seconds(s.proc.pid) - c0
        finally:
            s.stop()
        pair.server.exec(["nft", "flush", "ruleset"])
        s = serve(pair, Path(tmp), kernel=False)
        try:
            c0 = cpu_seconds(s.proc.pid)
            wall_u, refused_u = flood(pair, n)
            cpu_u = cpu_seconds(s.proc.pid) - c0
        finally:
            s.stop()
    ms = lambda xs: f"median {sorted(xs)[len(xs) // 2] * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"  # noqa: E731
    print(f"reload latency (SIGHUP -> kernel refuses/admits the changed address), 5 reloads: {ms(reloads)}")
    print(f"repair latency (nft flush ruleset -> refused again, interval 1 s), 5 flushes: {ms(repairs)}")
    print(f"flood of {n:,} connections from a blocked host:")
    print(f"  kernel: true   serve CPU {cpu_k:6.2f} s  ({cpu_k / n * 1e6:6.1f} µs/conn)  refused at SYN {refused_k:,}  wall {wall_k:.1f} s")
    print(f"  kernel: false  serve CPU {cpu_u:6.2f} s  ({cpu_u / n * 1e6:6.1f} µs/conn)  refused at SYN {refused_u:,}  wall {wall_u:.1f} s")
    tick = 1 / os.sysconf("SC_CLK_TCK")
    if cpu_k < tick:
        print(f"  userland/kernel CPU ratio: > {cpu_u / tick:.0f}x (kernel-mode CPU below one {tick * 1000:.0f} ms clock tick)")
    else:
        print(f"  userland/kernel CPU ratio: {cpu_u / cpu_k:.0f}x (kernel figure includes the 1 s reconciler checks)")


if __name__ == "__main__":
    main()
