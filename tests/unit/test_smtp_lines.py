"""Strict line reading: one reading of any byte stream, size and length enforced while reading."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from pathlib import Path

import pytest

from netpolicy.smtp.lines import (
    BareNewline,
    LineTooLong,
    is_strict,
    read_command,
    read_message,
)
from netpolicy.smtp.spool import ByteBudget, Spool


def reader(data: bytes, limit: int = 1001) -> asyncio.StreamReader:
    r = asyncio.StreamReader(limit=limit)
    r.feed_data(data)
    r.feed_eof()
    return r


@dataclass(frozen=True)
class Read:
    content: bytes | None  # what the spool holds; None when the message was refused
    size: int
    problem: str | None
    error: OSError | None


async def read(r: asyncio.StreamReader, size_limit: int, line_limit: int = 1001, *,
               budget: ByteBudget | None = None, threshold: int = 256 * 1024, directory: str | None = None) -> Read:
    spool = Spool(budget or ByteBudget(2**30), directory, threshold)
    held_before = spool.budget.used
    data = await read_message(r, spool, size_limit, line_limit)
    if data.problem is not None:
        assert spool.size == 0 and spool.budget.used == held_before  # a refused message holds nothing
        return Read(None, data.size, data.problem, data.error)
    content = b"".join(spool.blocks())
    assert len(content) == spool.size == spool.budget.used - held_before
    spool.discard()
    return Read(content, data.size, data.problem, data.error)


def test_is_strict() -> None:
    assert is_strict(b"MAIL FROM:<a@b>\r\n")
    assert is_strict(b"\r\n")
    assert not is_strict(b"MAIL\n")
    assert not is_strict(b"MA\rIL\r\n")
    assert not is_strict(b"\n")


async def test_commands() -> None:
    r = reader(b"EHLO a\r\nNOOP " + b"x" * 3000 + b"\r\nQUIT\r\nBAD\n")
    assert await read_command(r) == b"EHLO a"
    with pytest.raises(LineTooLong):
        await read_command(r)
    assert await read_command(r) == b"QUIT"  # the long line was dropped, nothing more
    with pytest.raises(BareNewline):
        await read_command(r)


async def test_message_unstuffs_and_stops_at_the_lone_dot() -> None:
    r = reader(b"Subject: x\r\n\r\n..leading\r\n.\r\nQUIT\r\n")
    data = await read(r, 1000)
    assert data.content == b"Subject: x\r\n\r\n.leading\r\n"
    assert data.problem is None and data.size == len(data.content)
    assert await read_command(r) == b"QUIT"  # pipelined commands after the message stay readable


@pytest.mark.parametrize("end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\n", b"\rx\r\n"])
async def test_bare_cr_or_lf_anywhere_is_refused(end: bytes) -> None:
    with pytest.raises(BareNewline):
        await read(reader(b"Subject: x\r\n\r\nbody" + end + b"MAIL FROM:<e@x>\r\n\r\n.\r\n"), 10_000)


async def test_size_limit_drops_the_message_but_reads_to_the_end() -> None:
    r = reader(b"x" * 98 + b"\r\n" + b"y" * 98 + b"\r\n" + b".\r\nNOOP\r\n")
    data = await read(r, 150)
    assert (data.content, data.problem, data.size) == (None, "size", 200)
    assert await read_command(r) == b"NOOP"


async def test_over_long_line_is_refused() -> None:
    r = reader(b"ok\r\n" + b"z" * 5000 + b"\r\nafter\r\n.\r\nNOOP\r\n", limit=100)
    data = await read(r, 10_000)
    assert (data.content, data.problem) == (None, "line")
    assert await read_command(r) == b"NOOP"


@pytest.mark.parametrize("length", [98, 99, 100])
async def test_line_limit_counts_crlf(length: int) -> None:
    data = await read(reader(b"z" * length + b"\r\n.\r\n"), 10_000, line_limit=100)
    assert data.problem == (None if length <= 98 else "line")


async def test_pieces_split_between_cr_and_lf_are_not_a_bare_cr() -> None:
    # A small reader limit makes the reader hand over pieces that end inside CRLF pairs.
    body = b"".join(b"line %d with a dot.\r\n" % n for n in range(200))
    for limit in (7, 13, 64):
        data = await read(reader(body + b".\r\n", limit=limit), 100_000)
        assert data.content == body, limit


async def test_lines_ending_in_a_dot_do_not_end_the_message() -> None:
    r = reader(b"Regards.\r\n.\r\n\r\n.\r\nx.\r\n..\r\n.\r\nNOOP\r\n")
    first = await read(r, 10_000)
    assert first.content == b"Regards.\r\n"
    second = await read(r, 10_000)
    assert second.content == b"\r\n"
    third = await read(r, 10_000)
    assert third.content == b"x.\r\n.\r\n"
    assert await read_command(r) == b"NOOP"


async def test_empty_message() -> None:
    data = await read(reader(b".\r\n"), 10)
    assert (data.content, data.size, data.problem) == (b"", 0, None)


async def test_size_counts_unstuffed_bytes() -> None:
    data = await read(reader(b"..\r\n" * 5 + b".\r\n"), 15)  # 5 lines of ".\r\n"
    assert (data.content, data.size) == (b".\r\n" * 5, 15)
    assert (await read(reader(b"..\r\n" * 6 + b".\r\n"), 15)).problem == "size"


async def test_a_long_line_split_across_pieces_is_caught() -> None:
    data = await read(reader(b"z" * 5000 + b"\r\n.\r\n", limit=64), 100_000, line_limit=1001)
    assert data.problem == "line"


async def test_nul_refuses_the_message_and_reads_to_the_end() -> None:
    r = reader(b"Subject: x\r\n\r\nbin\0ary\r\n" + b"y" * 50 + b"\r\n.\r\nNOOP\r\n")
    data = await read(r, 10_000)
    assert (data.content, data.problem) == (None, "nul")
    assert await read_command(r) == b"NOOP"


async def test_unstuffing_is_the_same_across_piece_and_spool_boundaries() -> None:
    # Dots at line starts land at every offset of the reader's pieces and of the spool's blocks.
    body = b".first\r\n" + b"".join(b"." * (n % 5) + b"line %d\r\n" % n for n in range(3000))
    stuffed = b"." + body.replace(b"\r\n.", b"\r\n..")
    for limit, threshold in ((7, 100), (64, 1000), (1001, 256 * 1024)):
        data = await read(reader(stuffed + b".\r\n", limit=limit), 10**6, threshold=threshold)
        assert (data.content, data.size) == (body, len(body)), (limit, threshold)


async def test_over_the_budget_the_message_is_dropped_and_the_budget_given_back() -> None:
    budget = ByteBudget(10_000)
    assert budget.take(4_000)  # another session's message
    r = reader((b"y" * 98 + b"\r\n") * 80 + b".\r\nNOOP\r\n")
    data = await read(r, 10**6, budget=budget)
    assert data.problem == "busy" and budget.used == 4_000
    assert await read_command(r) == b"NOOP"


async def test_a_spool_write_error_is_kept_for_the_reply(tmp_path: Path) -> None:
    r = reader((b"y" * 98 + b"\r\n") * 30 + b".\r\nNOOP\r\n")
    data = await read(r, 10**6, threshold=1000, directory=str(tmp_path / "missing"))
    assert data.problem == "storage" and data.error is not None and data.error.errno == errno.ENOENT
    assert await read_command(r) == b"NOOP"
