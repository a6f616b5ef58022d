"""Hostile and broken clients: smuggling, bare newlines, long lines, stalls, memory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from netpolicy.smtp import SessionLimits
from netpolicy.smtp.delivery import MaildirSink
from tests.support.smtp import PLAIN, env, smtp_pair
from tests.support.netns import NetPair

__all__ = ["smtp_pair"]

SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\n", b"\r\n.\r\r\n"]


@pytest.mark.parametrize("end", SMUGGLING, ids=[repr(s)[2:-1] for s in SMUGGLING])
async def test_smuggling_sequences_are_refused(smtp_pair: NetPair, tmp_path: Path, end: bytes) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.cmd("DATA")).code == 354
        forged = b"MAIL FROM:<evil@forged.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n.\r\n"
        await client.send(b"Subject: x\r\n\r\nhello" + end + forged + b"\r\n.\r\n")
        answer = await client.answer()
        assert answer.code == 521 and answer.lines[0].startswith("5.5.2 ")
        assert await client.at_eof()
        assert e.stored() == [] and not e.log_lines("evil@forged.test")


async def test_bare_lf_command_is_refused(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.send(b"EHLO client.test\n")
        answer = await client.answer()
        assert answer.code == 521 and answer.lines[0].startswith("5.5.2 ")
        assert await client.at_eof()


async def test_null_sender_for_bounces(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("", "b@example.test")
        assert (await client.message()).code == 250
        [name] = e.stored()
        assert (Path(e.maildir) / "new" / name).read_bytes().startswith(b"Return-Path: <>\n")


async def test_long_command_line_is_refused_and_the_session_goes_on(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        answer = await client.cmd("NOOP " + "x" * 5000)
        assert answer.code == 500 and answer.lines[0].startswith("5.5.2 ")
        assert (await client.cmd("NOOP")).code == 250


async def test_long_message_line_is_refused(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        answer = await client.message(b"Subject: x\r\n\r\n" + b"y" * 3000 + b"\r\n")
        assert answer.code == 500 and answer.lines[0].startswith("5.5.2 ")
        assert e.stored() == []
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.message()).code == 250


async def test_help_lists_what_is_offered(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        answer = await client.cmd("HELP")
        assert answer.code == 250
        assert answer.text.split(": ", 1)[1].split() == sorted(["DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "VRFY"])
        assert str(await client.cmd("HELP MAIL")) == "250 Syntax: MAIL FROM: <address>"


async def test_too_many_unknown_commands(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        for _ in range(4):
            assert (await client.cmd("XYZZY")).code == 500
        assert (await client.cmd("XYZZY")).code == 502
        assert await client.at_eof()


async def test_command_timeout(smtp_pair: NetPair, tmp_path: Path) -> None:
    e = env(smtp_pair, tmp_path)
    e.limits = SessionLimits(command_timeout=0.5)
    async with e:
        client = await e.client(PLAIN)
        answer = await client.answer(timeout=3)
        assert answer.code == 421 and answer.lines[0].startswith("4.4.2 ")
        assert await client.at_eof()


async def test_data_deadline_is_not_reset_by_a_slow_drip(smtp_pair: NetPair, tmp_path: Path) -> None:
    e = env(smtp_pair, tmp_path)
    e.limits = SessionLimits(command_timeout=5, data_deadline=1.0)
    async with e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.cmd("DATA")).code == 354
        started = time.monotonic()
        with pytest.raises((ConnectionError, OSError)):
            while time.monotonic() - started < 4:
                await client.send(b"still sending\r\n")
                await asyncio.sleep(0.1)  # the slow drip under test, not a wait for the server
        assert 0.9 < time.monotonic() - started < 2.5
        assert e.stored() == []


async def test_memory_stays_bounded_for_an_endless_line(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        assert e.listener is not None
        client = await e.client(PLAIN)
        await client.send(b"NOOP ")
        largest = 0
        for _ in range(64):  # 4 MiB without a line end
            await client.send(b"z" * 65536)
            await asyncio.sleep(0)  # one turn of the loop: the session reads what was sent, then the buffer is sampled
            largest = max([largest, *(len(s._reader._buffer) for s in e.listener._services.sessions)])  # type: ignore[attr-defined]
        await client.send(b"\r\n")
        assert (await client.answer()).code == 500
        assert largest <= 2 * 1001 + 256 * 1024  # twice the line limit plus one socket read
        assert (await client.cmd("NOOP")).code == 250


async def test_internal_error_answers_421_never_250(smtp_pair: NetPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: MaildirSink, *args: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MaildirSink, "write", broken)
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        answer = await client.message()
        assert answer.code == 421 and answer.lines[0].startswith("4.3.0 ")
        assert await client.at_eof()
        assert e.stored() == []
