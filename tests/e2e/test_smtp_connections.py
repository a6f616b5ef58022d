"""Connection lifecycle: sockets closed by the client go away, early talkers are refused, and a
process short of file descriptors says so and recovers.

The first two tests run the listener in the test's event loop on a socket in the server
namespace (``tests/support/smtp.py``); the last runs ``netpolicy serve`` itself, because the daemon runs
on uvloop, whose accept path under EMFILE is not asyncio's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from netpolicy.model.hat import Fact
from tests.support.netns import NetPair
from tests.support.serve import NETPOLICY, Served
from tests.support.serve_policy import PORT as SERVE_PORT
from tests.support.serve_policy import write_policy
from tests.support.smtp import (
    PLAIN,
    FakeResolver,
    SmtpEnv,
    env,
    policy_dict,
    smtp_pair,
)
from tests.support.wait import wait_until, wait_until_async

__all__ = ["smtp_pair"]


def own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _ehlo_then_close(e: SmtpEnv) -> None:
    client = await e.client(PLAIN)
    assert (await client.cmd("EHLO client.test")).code == 250
    await client.close()


async def _quit_without_reading(e: SmtpEnv) -> None:
    """Postfix's habit: QUIT and close at once, the 221 never read (QUIT and FIN arrive together)."""
    client = await e.client(PLAIN)
    assert (await client.cmd("EHLO client.test")).code == 250
    await client.send(b"QUIT\r\n")
    await client.close()


async def test_sockets_closed_by_clients_are_gone_within_a_second(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        assert e.listener is not None
        idle = own_fds()
        gate = asyncio.Semaphore(20)

        async def one(session: Callable[[SmtpEnv], Awaitable[None]]) -> None:
            async with gate:
                await session(e)

        await asyncio.gather(*(one(_ehlo_then_close) for _ in range(100)), *(one(_quit_without_reading) for _ in range(100)))
        closed = time.monotonic()
        stats = e.listener.stats
        await wait_until_async(lambda: not smtp_pair.server.tcp_connections() and own_fds() <= idle and not stats.open_connections,
                               "every server socket, fd and session to be gone", timeout=1.0)
        assert time.monotonic() - closed < 1.0
        assert len(e.log_lines(r"ICID \d+ close$")) == 200


class GatedResolver(FakeResolver):
    """Holds every HAT decision until the test opens the gate: bytes sent meanwhile arrive
    while the decision is being made, before any banner."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        await self.gate.wait()
        return await super().verified_hostname(address)


def gated_env(pair: NetPair, tmp_path: Path) -> tuple[SmtpEnv, GatedResolver]:
    maildir = str(tmp_path / "maildir")
    resolver = GatedResolver()
    return SmtpEnv(pair, maildir, policy_dict(pair.server_v4, maildir), resolver=resolver), resolver


async def test_talking_before_the_greeting_is_refused_and_counted(smtp_pair: NetPair, tmp_path: Path) -> None:
    e, resolver = gated_env(smtp_pair, tmp_path)
    async with e:
        assert e.listener is not None
        sessions = e.listener._services.sessions
        client = await e.client(PLAIN, banner=None)
        await client.send(b"EHLO early.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n")
        await wait_until_async(lambda: any(s.early for s in sessions), "the early talker to be noticed")
        resolver.gate.set()
        answer = await client.answer()
        assert answer.code == 554 and answer.lines[0].startswith("5.5.1 ") and "Protocol error" in answer.text
        assert await client.at_eof()
        await wait_until_async(lambda: e.log_lines(r"ICID \d+ close$"), "the close log line")
        assert e.log_lines(r"^ICID \d+ Connection refused: PREGREET after [0-9.]+ s: EHLO early\.test\\r\\nMAIL FROM")
        assert not e.log_lines("Start MID")
        assert e.offences == [(PLAIN, "ALL", "pregreet")]
        assert e.listener.stats.pregreet == 1


async def test_pipelining_after_the_greeting_is_not_pregreet(smtp_pair: NetPair, tmp_path: Path) -> None:
    e, resolver = gated_env(smtp_pair, tmp_path)
    resolver.gate.set()
    async with e:
        client = await e.client(PLAIN)  # the banner is read first
        await client.send(b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        codes = [(await client.answer()).code for _ in range(4)]
        assert codes == [250, 250, 250, 354]
        await client.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        assert [(await client.answer()).code for _ in range(2)] == [250, 221]
        assert await client.at_eof()
        assert len(e.stored()) == 1 and e.offences == [] and not e.log_lines("PREGREET")


def _first_line(pair: NetPair, timeout: float = 3.0) -> tuple[socket.socket, str]:
    """Connect to serve and read the first reply line ('eof' when closed without one)."""
    sock = pair.client.connect((pair.server_v4, SERVE_PORT), timeout=timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(512)
        if not chunk:
            break
        data += chunk
    return sock, data[:3].decode() or "eof"


def test_fd_shortage_is_logged_counted_and_recovers(netpair: NetPair, tmp_path: Path) -> None:
    served = Served(netpair, tmp_path)
    stderr_path = served.stderr
    write_policy(served.policy, netpair.server_v4, tmp_path / "maildir", kernel=False)
    clients: list[socket.socket] = []
    try:
        served.launch([NETPOLICY, "serve", "-p", str(served.policy), "--metrics", "127.0.0.1:9109"])
        proc = served.proc
        fd_dir = f"/proc/{proc.pid}/fd"  # ip netns exec execs serve: same pid
        idle = len(os.listdir(fd_dir))
        subprocess.run(["prlimit", f"--pid={proc.pid}", f"--nofile={idle + 48}:{idle + 48}"], check=True)
        firsts = []
        for _ in range(60):
            sock, first = _first_line(netpair)
            clients.append(sock)
            firsts.append(first)
        assert set(firsts) <= {"220", "421"}, firsts  # nobody is dropped without a reply
        assert "421" in firsts and firsts.index("421") > 0
        wait_until(lambda: "running short of file descriptors" in stderr_path.read_text(), "the shortage log line")

        def metrics() -> dict[str, float]:
            text = netpair.server.call(lambda: urllib.request.urlopen("http://127.0.0.1:9109/metrics", timeout=3).read().decode())
            return {k: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines() if line.startswith("netpolicy_fd"))}

        seen = metrics()
        assert seen["netpolicy_fd_short"] == 1 and seen["netpolicy_fd_refusals_total"] == firsts.count("421")
        assert seen["netpolicy_fd_limit"] == idle + 48
        for sock in clients:
            sock.close()
        clients.clear()
        wait_until(lambda: len(os.listdir(fd_dir)) <= idle + 2, "serve's fds back to idle")
        sock, first = _first_line(netpair)
        sock.close()
        assert first == "220"
        wait_until(lambda: "file descriptors available again" in stderr_path.read_text(), "the recovery log line")
        assert stderr_path.read_text().count("running short of file descriptors") == 1  # once per episode
        assert metrics()["netpolicy_fd_short"] == 0
    finally:
        for sock in clients:
            sock.close()
        served.stop()
