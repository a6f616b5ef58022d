"""Maildir delivery under load: 1,000 messages over parallel sessions, every one stored once."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiosmtplib

from tests.support.smtp import PLAIN, PORT, SmtpEnv, env, smtp_pair
from tests.support.netns import NetPair

__all__ = ["smtp_pair"]

WORKERS, PER_WORKER, PER_CONNECTION = 10, 100, 10


async def _worker(e: SmtpEnv, worker: int) -> None:
    for first in range(0, PER_WORKER, PER_CONNECTION):
        sock = e.pair.client.connect((e.pair.server_v4, PORT), source=PLAIN)
        sock.setblocking(False)
        client = aiosmtplib.SMTP(sock=sock, start_tls=False, local_hostname="client.test", timeout=30)
        await client.connect()
        for n in range(first, first + PER_CONNECTION):
            body = f"Subject: load {worker}/{n}\r\n\r\ntoken-{worker}-{n}\r\n".encode()
            errors, reply = await client.sendmail("load@sender.test", [f"r{n}@example.test"], body)
            assert errors == {} and reply.startswith("2.0.0"), reply
        await client.quit()


async def test_thousand_messages_nothing_lost(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        await asyncio.gather(*(_worker(e, w) for w in range(WORKERS)))
        assert e.listener is not None
        assert e.listener.stats.messages_delivered == WORKERS * PER_WORKER
    new = Path(e.maildir) / "new"
    tokens = [re.search(rb"token-\d+-\d+", (new / name).read_bytes()).group() for name in os.listdir(new)]  # type: ignore[union-attr]
    assert len(tokens) == WORKERS * PER_WORKER
    assert set(tokens) == {f"token-{w}-{n}".encode() for w in range(WORKERS) for n in range(PER_WORKER)}
    assert os.listdir(Path(e.maildir) / "tmp") == []
