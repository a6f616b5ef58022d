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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.serve_policy import BLOCKED, LATER, PORT, write_policy  # noqa: E402
from tests.support.netns import NetPair, net_pair  # noqa: E402

NETPOLICY = str(Path(sys.executable).with_name("netpolicy"))
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


def wait(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(0.002)
    raise RuntimeError("timed out")


def start(pair: NetPair, policy: Path) -> subprocess.Popen[bytes]:
    proc = pair.server.popen([NETPOLICY, "serve", "-p", str(policy), "--mail-log", str(policy.parent / "mail.log")],
                             stdout=subprocess.DEVNULL, stderr=open(policy.parent / "serve.err", "ab"))
    wait(lambda: admitted(pair, pair.client_v4), 20)
    return proc


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
        policy = Path(tmp) / "policy.yml"
        write_policy(policy, pair.server_v4, policy.parent / "maildir", BLOCKED)
        proc = start(pair, policy)
        try:
            reloads = []
            for i in range(5):
                blacklist = f"{BLOCKED}, {LATER}" if i % 2 == 0 else BLOCKED
                write_policy(policy, pair.server_v4, policy.parent / "maildir", blacklist)
                t0 = time.perf_counter()
                proc.send_signal(signal.SIGHUP)
                wait((lambda: refused(pair, LATER)) if i % 2 == 0 else (lambda: admitted(pair, LATER)), 10)
                reloads.append(time.perf_counter() - t0)
            repairs = []
            for _ in range(5):
                pair.server.exec(["nft", "flush", "ruleset"])
                t0 = time.perf_counter()
                wait(lambda: refused(pair, BLOCKED), 10)
                repairs.append(time.perf_counter() - t0)
                time.sleep(0.3)
            c0 = cpu_seconds(proc.pid)
            wall_k, refused_k = flood(pair, n)
            cpu_k = cpu_seconds(proc.pid) - c0
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        pair.server.exec(["nft", "flush", "ruleset"])
        write_policy(policy, pair.server_v4, policy.parent / "maildir", BLOCKED, kernel=False)
        proc = start(pair, policy)
        try:
            c0 = cpu_seconds(proc.pid)
            wall_u, refused_u = flood(pair, n)
            cpu_u = cpu_seconds(proc.pid) - c0
        finally:
            proc.terminate()
            proc.wait(timeout=15)
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
