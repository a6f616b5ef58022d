"""Maildir hand-off: durable before 250, nothing half-written after a failure."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from netpolicy.smtp.delivery import MaildirSink, Reply
from netpolicy.smtp.spool import ByteBudget, Spool


def spool(data: bytes, threshold: int = 256 * 1024) -> Spool:
    s = Spool(ByteBudget(2**30), threshold=threshold)
    for start in range(0, len(data), 1000):
        s.write(data[start:start + 1000])
    return s


async def test_message_lands_in_new_with_its_envelope(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    txn = await sink.open("a@sender.test", None)
    assert (await txn.recipient("b@example.test")).ok
    assert (await txn.recipient("c@example.test")).ok
    reply = await txn.deliver(spool(b"Subject: x\r\n\r\nbody\r\n"))
    assert reply.code == 250 and reply.text.startswith("2.0.0 ")
    [name] = os.listdir(tmp_path / "md" / "new")
    assert (tmp_path / "md" / "new" / name).read_bytes() == (
        b"Return-Path: <a@sender.test>\nX-Original-To: <b@example.test>\nX-Original-To: <c@example.test>\n"
        b"Subject: x\n\nbody\n"
    )
    assert os.listdir(tmp_path / "md" / "tmp") == [] and os.path.isdir(tmp_path / "md" / "cur")


async def test_a_spooled_message_is_converted_block_by_block(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    txn = await sink.open("a@sender.test", None)
    await txn.recipient("b@example.test")
    body = b"".join(b"line %d of a long message\r\n" % n for n in range(20_000))  # 570 KB, 9 blocks
    message = spool(b"Subject: x\r\n\r\n" + body, threshold=10_000)
    assert message.spooled
    assert (await txn.deliver(message)).code == 250
    [name] = os.listdir(tmp_path / "md" / "new")
    assert (tmp_path / "md" / "new" / name).read_bytes() == (
        b"Return-Path: <a@sender.test>\nX-Original-To: <b@example.test>\nSubject: x\n\n" + body.replace(b"\r\n", b"\n")
    )


@pytest.mark.parametrize(("error", "code", "status"), [
    (errno.ENOSPC, 452, "4.3.1 Insufficient system storage"),
    (errno.EDQUOT, 452, "4.3.1 Insufficient system storage"),
    (errno.EIO, 451, "4.3.0 Error: cannot store message"),
])
async def test_failed_write_answers_4xx_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, code: int, status: str) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    txn = await sink.open("a@sender.test", None)
    await txn.recipient("b@example.test")

    def failing(fd: int) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", failing)
    reply = await txn.deliver(spool(b"Subject: x\r\n\r\nbody\r\n"))
    assert reply.code == code and reply.text.startswith(status)
    assert os.listdir(tmp_path / "md" / "tmp") == [] and os.listdir(tmp_path / "md" / "new") == []


def test_leftovers_in_tmp_are_removed_at_start_unless_a_live_writer_owns_them(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    tmp = tmp_path / "md" / "tmp"
    host = sink.write(b"", spool(b"x\r\n")).split(".", 2)[2]
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = finished.pid  # a pid that was a writer and is gone
    old = 1_000_000_000
    files = {
        "killed": f"{old}.M1P{dead}Q0.{host}",  # our naming, writer gone: removed
        "live": f"{old}.M1P{os.getpid()}Q0.{host}",  # our naming, writer alive: kept
        "other-host": f"{old}.M1P{dead}Q0.elsewhere",  # another host's writer: kept (fresh)
        "foreign": "1700000000.12345_1.mx",  # another MDA's fresh file: kept
        "stale": "1600000000.999_1.mx",  # any name, older than 36 h: removed
    }
    for name in files.values():
        (tmp / name).write_bytes(b"partial")
    os.utime(tmp / files["stale"], (0, 0))
    MaildirSink(str(tmp_path / "md"))
    assert sorted(os.listdir(tmp)) == sorted([files["live"], files["other-host"], files["foreign"]])


def test_names_are_unique(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    names = {sink.write(b"", spool(b"x\r\n")) for _ in range(200)}
    assert len(names) == 200 == len(os.listdir(tmp_path / "md" / "new"))


def test_multiline_reply() -> None:
    assert Reply(250, "2.0.0 Ok").lines() == ["250 2.0.0 Ok"]
    assert Reply(550, "5.1.1 No such user\nsee https://x.test").lines() == ["550-5.1.1 No such user", "550 see https://x.test"]
