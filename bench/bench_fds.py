"""File descriptors after clients hang up (issue 10): how long until a server is back at idle.

Each server runs alone in the server namespace of a pair this script creates; the load comes
from the client namespace: N sessions (default 2,000, 50 at a time), half closing right after
the EHLO reply, half sending QUIT and closing without reading the 221 (Postfix's habit, where
the QUIT and the FIN arrive together). The server's open descriptors (``/proc/PID/fd``) are
sampled every 10 ms during the load and after the last close until they are back at the idle
count, for at most ``--wait`` seconds after it.

Servers: ``netpolicy serve`` (uvloop, Maildir delivery), bare aiosmtpd 1.4.6 on asyncio (the
library the session is built on), and Postfix's ``smtp-sink`` (a C event loop: the ceiling).

Usage: python bench/bench_fds.py [--sessions N] [--wait S]   (test addresses only, bounded)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.netns import NetPair, net_pair  # noqa: E402
from tests.support.serve_policy import PORT, write_policy  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

NETPOLICY = str(Path(sys.executable).with_name("netpolicy"))


def serve_aiosmtpd(host: str, port: int) -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    async def main() -> None:
        await asyncio.get_running_loop().create_server(lambda: SMTP(Handler(), hostname="bench"), host, port, backlog=1024)
        await asyncio.Event().wait()

    asyncio.run(main())


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def banner(pair: NetPair) -> bool:
    try:
        with pair.client.connect((pair.server_v4, PORT), timeout=1) as sock:
            return sock.recv(16).startswith(b"220")
    except OSError:
        return False


async def _session(host: str, quit_unread: bool) -> None:
    reader, writer = await asyncio.open_connection(host, PORT)
    try:
        await reader.readuntil(b"\r\n")
        writer.write(b"EHLO load.test\r\n")
        while not (await reader.readuntil(b"\r\n"))[3:4] == b" ":
            pass
        if quit_unread:
            writer.write(b"QUIT\r\n")
    finally:
        writer.close()


def load(pair: NetPair, sessions: int, concurrency: int = 50) -> tuple[int, float]:
    """Run the sessions from a thread inside the client namespace; returns how many failed and
    the monotonic time of the last close."""
    async def run() -> tuple[int, float]:
        gate = asyncio.Semaphore(concurrency)
        last_close = 0.0

        async def one(i: int) -> bool:
            nonlocal last_close
            async with gate:
                try:
                    await asyncio.wait_for(_session(pair.server_v4, quit_unread=i % 2 == 1), 10)
                    return True
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    return False
                finally:
                    last_close = time.monotonic()

        results = await asyncio.gather(*(one(i) for i in range(sessions)))
        return results.count(False), last_close

    return pair.client.call(lambda: asyncio.run(run()))


def measure(name: str, pair: NetPair, args: list[str], sessions: int, limit: float) -> str:
    proc = pair.server.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: banner(pair), f"{name} to greet", timeout=20)
        wait_until(lambda: not pair.server.tcp_connections(), "the greeting probe's connection to close")
        idle = fds(proc.pid)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), fds(proc.pid)))
                time.sleep(0.01)  # the sampling period, not a wait for anything

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            failed, last_close = load(pair, sessions)
            with contextlib.suppress(AssertionError):  # not back within the limit: reported below
                wait_until(lambda: bool(samples) and samples[-1][0] > last_close and samples[-1][1] <= idle, "idle fds",
                           timeout=max(0.0, last_close + limit - time.monotonic()), step=0.01)
        finally:
            stop.set()
            sampler.join()
        peak = max(n for _, n in samples)
        at_close = [n for t, n in samples if t <= last_close][-1]
        end_t, end_n = samples[-1]
        back = (f"back at idle {max(0.0, end_t - last_close) * 1000:5.0f} ms after the last close" if end_n <= idle
                else f"NOT back {limit:.0f} s after the last close: {end_n - idle} fds still open")
        return (f"{name:18} idle {idle:3} fds, peak {peak:5}, {at_close:5} at the last close; {back}; "
                f"{failed} sessions failed")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--aiosmtpd", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.aiosmtpd:
        serve_aiosmtpd(options.aiosmtpd[0], int(options.aiosmtpd[1]))
        return 0
    with net_pair() as pair, tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yml"
        write_policy(policy, pair.server_v4, Path(tmp) / "maildir", kernel=False)
        servers = [
            ("netpolicy serve", [NETPOLICY, "serve", "-p", str(policy), "--mail-log", str(Path(tmp) / "mail.log")]),
            ("aiosmtpd 1.4.6", [sys.executable, os.path.abspath(__file__), "--aiosmtpd", pair.server_v4, str(PORT)]),
        ]
        if shutil.which("smtp-sink"):
            servers.append(("postfix smtp-sink", ["smtp-sink", "-u", "postfix", f"{pair.server_v4}:{PORT}", "1024"]))
        print(f"{options.sessions:,} sessions (half EHLO-close, half QUIT-close unread), 50 at a time")
        for name, args in servers:
            print(measure(name, pair, args, options.sessions, options.wait), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
