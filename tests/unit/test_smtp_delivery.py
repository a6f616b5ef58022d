"""Hand-off: Maildir durable before 250, nothing half-written after a failure; the next hop
told who the client is and given the client's parameters (SPEC.md section 9)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from netpolicy.smtp.delivery import (
    ClientFacts,
    HandOffError,
    MaildirSink,
    MailOptions,
    NextHopSink,
    RcptOptions,
    Reply,
    client_attributes,
    xtext,
)
from netpolicy.smtp.spool import ByteBudget, Spool
from tests.support.next_hop import ScriptedHop


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


# --- next hop: who the client is, the parameters passed on ---------------------------------

CLIENT = ClientFacts("192.0.2.7", 40001, None, "client.test", esmtp=True, ident="42")
POSTFIX_XCLIENT = "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"  # Postfix 3.7
POSTFIX_XFORWARD = "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"


def test_xtext_escapes_plus_equals_space_and_non_ascii() -> None:
    assert xtext("mx.example.test") == "mx.example.test"
    assert xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"


def test_client_attributes_are_the_ones_the_hop_lists() -> None:
    assert client_attributes(CLIENT, "NAME ADDR PROTO HELO", xforward=False) == [
        "ADDR=192.0.2.7", "NAME=[UNAVAILABLE]", "HELO=client.test", "PROTO=ESMTP"]
    v6 = ClientFacts("2001:db8::7", None, "mx.sender.test", "[2001:db8::7]", esmtp=False, ident="9")
    assert client_attributes(v6, POSTFIX_XFORWARD.split(" ", 1)[1], xforward=True) == [
        "ADDR=IPV6:2001:db8::7", "PORT=[UNAVAILABLE]", "NAME=mx.sender.test", "HELO=[2001:db8::7]", "PROTO=SMTP",
        "SOURCE=REMOTE", "IDENT=9"]


def test_a_helo_that_would_not_fit_one_command_is_unavailable() -> None:
    """After one XCLIENT Postfix judges the forwarded client, which may not send another."""
    long_helo = ClientFacts("192.0.2.7", 1, "n" * 200, "h=" * 120, esmtp=True, ident="1")
    attributes = client_attributes(long_helo, POSTFIX_XCLIENT.split(" ", 1)[1], xforward=False)
    assert "HELO=[UNAVAILABLE]" in attributes and len(" ".join(["XCLIENT", *attributes])) <= 510
    too_long = ClientFacts("192.0.2.7", 1, None, "h" * 256, esmtp=True, ident="1")
    assert "HELO=[UNAVAILABLE]" in client_attributes(too_long, "HELO", xforward=False)


async def relay(hop: ScriptedHop, options: MailOptions | None = None, rcpt: RcptOptions | None = None,
                recipient: str = "b@example.test", sender: str = "a@sender.test", **sink: str) -> Reply:
    """One transaction through a NextHopSink to ``hop``; the RCPT's reply."""
    address = await hop.start()
    try:
        txn = await NextHopSink(address, 5, "mx.example.test", **sink).open(sender, options, CLIENT)
        try:
            return await txn.recipient(recipient, rcpt)
        finally:
            await txn.close()
    finally:
        await hop.stop()


async def test_xclient_then_ehlo_as_the_client() -> None:
    hop = ScriptedHop(extensions=[POSTFIX_XCLIENT, POSTFIX_XFORWARD])
    assert (await relay(hop)).ok
    assert hop.commands[:4] == [
        "EHLO mx.example.test",
        "XCLIENT ADDR=192.0.2.7 PORT=40001 NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP",
        "EHLO client.test",
        "MAIL FROM:<a@sender.test>",
    ]


async def test_xforward_when_no_xclient_and_nothing_when_neither_or_off() -> None:
    hop = ScriptedHop(extensions=[POSTFIX_XFORWARD])
    await relay(hop)
    assert hop.commands[1] == "XFORWARD ADDR=192.0.2.7 PORT=40001 NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP SOURCE=REMOTE IDENT=42"
    for hop, sink in ((ScriptedHop(extensions=["8BITMIME"]), {}), (ScriptedHop(extensions=[POSTFIX_XCLIENT]), {"forward_client": "off"})):
        await relay(hop, **sink)
        assert [c.split()[0] for c in hop.commands[:3]] == ["EHLO", "MAIL", "RCPT"]


@pytest.mark.parametrize(("reply", "expected"), [("501 5.5.4 Bad NAME syntax", 451), ("421 4.3.2 Busy", 451), ("550 5.7.1 Client refused", 550)])
async def test_a_refused_xclient(reply: str, expected: int) -> None:
    """A 5xx other than 501 is the hop's access decision on the real client: passed on."""
    hop = ScriptedHop(extensions=[POSTFIX_XCLIENT], other_reply=reply)
    with pytest.raises(HandOffError) as refused:
        await NextHopSink(await hop.start(), 5, "mx.example.test").open("a@sender.test", None, CLIENT)
    assert refused.value.reply.code == expected
    await hop.stop()


async def test_parameters_are_passed_on_when_the_hop_offers_them() -> None:
    options = MailOptions(size=1234, body="8BITMIME", smtputf8=True, ret="HDRS", envid="Id+2B1")
    rcpt = RcptOptions(notify="SUCCESS,DELAY", orcpt="rfc822;B@example.test")
    hop = ScriptedHop(extensions=["SIZE 10240000", "8BITMIME", "DSN", "SMTPUTF8"])
    await relay(hop, options, rcpt)
    assert hop.commands[1:3] == ["MAIL FROM:<a@sender.test> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=Id+2B1",
                                 "RCPT TO:<b@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B@example.test"]
    hop = ScriptedHop(extensions=[])
    await relay(hop, options, rcpt)
    assert hop.commands[1:3] == ["MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>"]


async def test_utf8_towards_a_hop_without_smtputf8_is_553_5_6_7() -> None:
    options = MailOptions(smtputf8=True)
    assert str(await relay(ScriptedHop(extensions=["SMTPUTF8"]), options, recipient="用户@example.test")) == "250 2.1.5 Ok"
    refused = await relay(ScriptedHop(extensions=[]), options, recipient="用户@example.test")
    assert refused.code == 553 and refused.text.startswith("5.6.7 ")
    hop = ScriptedHop(extensions=[])
    with pytest.raises(HandOffError) as sender_refused:
        await relay(hop, options, sender="发件人@sender.test")
    assert sender_refused.value.reply.code == 553


@pytest.mark.parametrize(("name", "sent"), [
    ("mx1.sender.test", "NAME=mx1.sender.test"),
    ("192.0.2.7", "NAME=[UNAVAILABLE]"),  # Postfix: 501 5.5.4 Bad NAME syntax, for every message
    ("mx-.sender.test", "NAME=[UNAVAILABLE]"),  # likewise
    ("host.123", "NAME=host.123"),  # as Postfix 3.7 takes it
])
def test_a_name_postfix_would_refuse_is_unavailable(name: str, sent: str) -> None:
    facts = ClientFacts("192.0.2.7", 1, name, "h.test", esmtp=True, ident="1")
    assert client_attributes(facts, "NAME", xforward=False) == [sent]


def test_a_name_not_settled_for_now_is_tempunavail_to_xclient_only() -> None:
    """Postfix's reject_unknown_client_hostname defers [TEMPUNAVAIL] and refuses [UNAVAILABLE]."""
    failed = ClientFacts("192.0.2.7", 1, None, "h.test", esmtp=True, ident="1", name_tempfail=True)
    assert client_attributes(failed, "NAME", xforward=False) == ["NAME=[TEMPUNAVAIL]"]
    assert client_attributes(failed, "NAME", xforward=True) == ["NAME=[UNAVAILABLE]"]
    named = ClientFacts("192.0.2.7", 1, "mx1.sender.test", "h.test", esmtp=True, ident="1", name_tempfail=True)
    assert client_attributes(named, "NAME", xforward=False) == ["NAME=mx1.sender.test"]

