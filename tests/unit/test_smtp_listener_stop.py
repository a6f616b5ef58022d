"""``SmtpListener.stop``: open sessions are waited for on an event, sinks release their threads.

On loopback: the listener and its clients live in this process, no namespace is needed.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

from netpolicy.model import parse_policy
from netpolicy.model.hat import Fact, build_hat_indexes
from netpolicy.smtp.listener import SmtpListener, listening_socket
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.services import SessionLimits
from netpolicy.smtp.spool import ByteBudget
from tests.support.policies import LOOPBACK_POLICY


class Unlisted:
    """No PTR name, listed nowhere: every client gets the policy's ACCEPT."""

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        return Fact(None, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> Fact[bool]:
        return Fact(False, 300.0)


def _maildir_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("maildir")]


async def _listener(tmp_path: Path) -> SmtpListener:
    policy = parse_policy(LOOPBACK_POLICY.format(maildir=tmp_path / "md"), "p.yml")
    listener = SmtpListener(policy.listener("In"), build_hat_indexes(policy)["In"], Unlisted(), MailLog(stream=io.StringIO()))
    await listener.start(listening_socket("127.0.0.1", 0))  # any free port
    return listener


async def _deliver(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One message stored through the listener (so the Maildir writer threads exist)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    await writer.drain()
    while not (await reader.readline()).startswith(b"354"):
        pass
    writer.write(b"Subject: t\r\n\r\nhi\r\n.\r\n")
    assert (await reader.readline()).startswith(b"250 ")
    return reader, writer


async def test_stop_returns_when_the_last_session_ends_and_sinks_release_their_threads(tmp_path: Path) -> None:
    listener = await _listener(tmp_path)
    reader, writer = await _deliver(listener.bound[0][1])
    assert _maildir_threads(), "the Maildir sink writes on its own threads"
    stopping = asyncio.create_task(listener.stop(grace=30))
    await asyncio.sleep(0)  # let stop() close the server and begin to wait
    assert not stopping.done()
    ended = time.monotonic()
    writer.write(b"QUIT\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"221")
    await asyncio.wait_for(stopping, 5)
    assert time.monotonic() - ended < 1.0  # woken by the session's end, not by the 30 s grace
    writer.close()
    assert not _maildir_threads()


async def test_stop_ends_sessions_still_open_after_the_grace_with_421(tmp_path: Path) -> None:
    listener = await _listener(tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound[0][1])
    assert (await reader.readline()).startswith(b"220")
    await listener.stop(grace=0.2)
    assert (await reader.readline()).startswith(b"421 4.3.2")
    writer.close()


async def test_listeners_share_the_budget_they_are_given(tmp_path: Path) -> None:
    """serve passes one ByteBudget to every listener; without one a listener has its own."""
    policy = parse_policy(LOOPBACK_POLICY.format(maildir=tmp_path / "md"), "p.yml")
    hat = build_hat_indexes(policy)["In"]
    shared = ByteBudget(10**6)
    one, two = (SmtpListener(policy.listener("In"), hat, Unlisted(), MailLog(stream=io.StringIO()), budget=shared) for _ in range(2))
    assert one.budget is shared and two.budget is shared
    alone = SmtpListener(policy.listener("In"), hat, Unlisted(), MailLog(stream=io.StringIO()), limits=SessionLimits(inflight_bytes=4096))
    assert alone.budget is not shared and alone.budget.capacity == 4096
