"""DATA under pressure: the in-flight budget, NUL, a full disk, leftovers of a killed writer.

Every refusal here is a 4xx the client keeps its message for (or a 5xx for content that can
never be taken), and whatever got 250 is stored whole.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpolicy.smtp import SessionLimits
from tests.support.smtp import (
    PLAIN,
    TRUSTED,
    Answer,
    RawClient,
    SmtpEnv,
    env,
    smtp_pair,
)
from tests.support.next_hop import ScriptedHop, hop_env
from tests.support.netns import NetPair
from tests.support.wait import wait_until_async

__all__ = ["smtp_pair"]

LINE = b"y" * 98 + b"\r\n"


def body(n_bytes: int, tag: bytes) -> bytes:
    return b"Subject: " + tag + b"\r\n\r\n" + LINE * (n_bytes // len(LINE))


def stored_bodies(e: SmtpEnv) -> list[bytes]:
    """Each stored message without its envelope and Received header (LF line ends)."""
    out = []
    for name in e.stored():
        data = (Path(e.maildir) / "new" / name).read_bytes()
        out.append(data[data.index(b"\nSubject: ") + 1:])
    return sorted(out)


async def start_data(e: SmtpEnv, source: str) -> RawClient:
    client = await e.client(source)
    await client.envelope("a@sender.test", "b@example.test")
    return client


def budget_used(e: SmtpEnv) -> int:
    assert e.listener is not None
    return e.listener.budget.used


async def held(e: SmtpEnv, n_bytes: int) -> None:
    """Wait until the server holds at least ``n_bytes`` of messages in flight."""
    await wait_until_async(lambda: budget_used(e) >= n_bytes, f"{n_bytes} bytes held in the budget", timeout=10)


async def test_budget_exhausted_refuses_data_before_354(smtp_pair: NetPair, tmp_path: Path) -> None:
    capacity = 1_000_003  # the listener's own budget (serve shares one among its listeners)
    e = env(smtp_pair, tmp_path)
    e.limits = SessionLimits(inflight_bytes=capacity)
    first, second = body(960_000, b"first"), body(200_000, b"second")
    async with e:
        a = await start_data(e, PLAIN)
        assert (await a.cmd("DATA")).code == 354
        await a.send(first)  # no end yet: the message is in flight
        await held(e, len(first))
        b = await start_data(e, TRUSTED)
        answer = await b.cmd("DATA")
        assert answer.code == 452 and answer.text.startswith("4.3.1 "), answer
        await a.send(b".\r\n")
        assert (await a.answer()).code == 250
        assert (await b.message(second)).code == 250  # the same transaction, retried: nothing lost
        assert stored_bodies(e) == sorted([first.replace(b"\r\n", b"\n"), second.replace(b"\r\n", b"\n")])
        await wait_until_async(lambda: budget_used(e) == 0, "the budget to be given back")


async def test_budget_overrun_mid_message_answers_452_at_the_end(smtp_pair: NetPair, tmp_path: Path) -> None:
    capacity = 1_000_033
    e = env(smtp_pair, tmp_path)
    e.limits = SessionLimits(inflight_bytes=capacity)
    first, second = body(600_000, b"first"), body(500_000, b"second")
    async with e:
        a = await start_data(e, PLAIN)
        assert (await a.cmd("DATA")).code == 354
        await a.send(first)
        await held(e, len(first))
        b = await start_data(e, TRUSTED)
        answer = await b.message(second)
        assert answer.code == 452 and answer.text.startswith("4.3.1 "), answer
        await a.send(b".\r\n")
        assert (await a.answer()).code == 250
        assert (await b.cmd("MAIL FROM:<a@sender.test>")).code == 250
        assert (await b.cmd("RCPT TO:<b@example.test>")).code == 250
        assert (await b.message(second)).code == 250  # the client retried: nothing lost
        assert stored_bodies(e) == sorted([first.replace(b"\r\n", b"\n"), second.replace(b"\r\n", b"\n")])
        await wait_until_async(lambda: budget_used(e) == 0, "the budget to be given back")


async def test_nul_in_data_is_refused(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await start_data(e, PLAIN)
        answer = await client.message(b"Subject: x\r\n\r\nbefore\0after\r\n")
        assert answer.code == 554 and answer.text.startswith("5.6.0 "), answer
        assert e.stored() == [] and e.log_lines("NUL Character")
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.message()).code == 250  # the session goes on


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted under the test's own directory, unmounted even on failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def full_answer(answer: Answer) -> None:
    assert answer.code == 452 and answer.text.startswith("4.3.1 Insufficient system storage"), answer


async def test_full_maildir_disk_answers_452_insufficient_storage(smtp_pair: NetPair, tmp_path: Path, small_fs: Path) -> None:
    maildir = small_fs / "maildir"
    e = env(smtp_pair, tmp_path, delivery={"maildir": str(maildir)})
    e.maildir = str(maildir)
    async with e:
        client = await start_data(e, PLAIN)
        full_answer(await client.message(body(400_000, b"big")))
        assert e.stored() == [] and os.listdir(maildir / "tmp") == []
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.message()).code == 250  # a message that fits still does


async def test_full_spool_disk_answers_452_insufficient_storage(smtp_pair: NetPair, tmp_path: Path, small_fs: Path) -> None:
    e = env(smtp_pair, tmp_path)
    e.limits = SessionLimits(spool_dir=str(small_fs))
    async with e:
        client = await start_data(e, PLAIN)
        full_answer(await client.message(body(700_000, b"big")))  # past the 256 KiB spool threshold
        assert e.stored() == []
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.message()).code == 250


async def test_leftovers_of_a_killed_writer_are_removed_at_start(smtp_pair: NetPair, tmp_path: Path) -> None:
    tmp = tmp_path / "maildir" / "tmp"
    tmp.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    finished.wait()
    gone = finished.pid  # the pid of a writer that is gone
    host = os.uname().nodename.replace("/", "\\057").replace(":", "\\072")
    leftover = tmp / f"1700000000.M5P{gone}Q3.{host}"
    leftover.write_bytes(b"Return-Path: <a@sender.test>\nhalf a mess")
    async with env(smtp_pair, tmp_path) as e:
        assert not leftover.exists()
        client = await start_data(e, PLAIN)
        assert (await client.message()).code == 250


async def test_a_large_message_is_relayed_intact(smtp_pair: NetPair, tmp_path: Path) -> None:
    # Dot-stuffing is redone block by block on the way out: dots at line starts fall at every
    # offset of the 64 KiB blocks, and the message (780 KB) is spooled, past 256 KiB.
    text = b"Subject: big\r\n\r\n" + b"".join(b"." * (n % 3) + b"line %d\r\n" % n for n in range(60_000))
    stuffed = text.replace(b"\r\n.", b"\r\n..")
    hop = ScriptedHop()
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await start_data(e, PLAIN)
        assert (await client.message(stuffed)).code == 250
        [(_, _, received)] = hop.accepted
        assert received[received.index(b"Subject: big"):] == stuffed
    await hop.stop()
