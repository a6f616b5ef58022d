"""Maildir hand-off: durable before 250, nothing half-written after a failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from netpolicy.smtp.delivery import MaildirSink, Reply


async def test_message_lands_in_new_with_its_envelope(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    txn = await sink.open("a@sender.test", None)
    assert (await txn.recipient("b@example.test")).ok
    assert (await txn.recipient("c@example.test")).ok
    reply = await txn.deliver(b"Subject: x\r\n\r\nbody\r\n")
    assert reply.code == 250 and reply.text.startswith("2.0.0 ")
    [name] = os.listdir(tmp_path / "md" / "new")
    assert (tmp_path / "md" / "new" / name).read_bytes() == (
        b"Return-Path: <a@sender.test>\nX-Original-To: <b@example.test>\nX-Original-To: <c@example.test>\n"
        b"Subject: x\n\nbody\n"
    )
    assert os.listdir(tmp_path / "md" / "tmp") == [] and os.path.isdir(tmp_path / "md" / "cur")


async def test_failed_write_answers_451_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    txn = await sink.open("a@sender.test", None)
    await txn.recipient("b@example.test")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    reply = await txn.deliver(b"Subject: x\r\n\r\nbody\r\n")
    assert reply.code == 451 and reply.text.startswith("4.3.0 ")
    assert os.listdir(tmp_path / "md" / "tmp") == [] and os.listdir(tmp_path / "md" / "new") == []


def test_names_are_unique(tmp_path: Path) -> None:
    sink = MaildirSink(str(tmp_path / "md"))
    names = {sink.write(b"x\n") for _ in range(200)}
    assert len(names) == 200 == len(os.listdir(tmp_path / "md" / "new"))


def test_multiline_reply() -> None:
    assert Reply(250, "2.0.0 Ok").lines() == ["250 2.0.0 Ok"]
    assert Reply(550, "5.1.1 No such user\nsee https://x.test").lines() == ["550-5.1.1 No such user", "550 see https://x.test"]
