"""Hostile and unusual envelope addresses, Maildir and next-hop mode alike.

Control characters never reach a sink (aiosmtplib raises on them, which left the next-hop
connection open), paths must be RFC 5321 ``<...>`` paths, the bare ``<postmaster>`` of RFC 5321
section 4.5.1 is taken on every listener, and routing forms (percent hack, bang paths, source
routes) are refused to clients the RAT judges while relayed clients keep them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from netpolicy.smtp.delivery import NextHopSink
from tests.support.smtp import PLAIN, RELAY, SmtpEnv, env, smtp_pair
from tests.support.next_hop import ScriptedHop, hop_env
from tests.support.netns import NetPair
from tests.support.wait import wait_until_async

__all__ = ["smtp_pair"]

CONTROLS = ("\x00", "\x01")
BAD_SENDER = "501 5.1.7 Bad sender address syntax"  # Postfix's replies under strict_rfc821_envelopes
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"


@dataclass
class CountingHop(ScriptedHop):
    """A ScriptedHop that counts its connections (total and still open).

    ``mute_quit`` leaves QUIT unanswered until the client hangs up.
    """

    connections: int = 0
    open_connections: int = 0
    mute_quit: bool = False
    quits_unanswered: int = 0

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            await super()._session(cast(asyncio.StreamReader, _QuitGate(reader, self)) if self.mute_quit else reader, writer)
        finally:
            writer.close()
            self.open_connections -= 1


class _QuitGate:
    """A reader that swallows QUIT and reports end of input once the client closed."""

    def __init__(self, reader: asyncio.StreamReader, hop: CountingHop) -> None:
        self.reader, self.hop = reader, hop

    async def readline(self) -> bytes:
        line = await self.reader.readline()
        if line.upper().startswith(b"QUIT"):
            self.hop.quits_unanswered += 1
            await self.reader.read()
            return b""
        return line


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("char", CONTROLS)
async def test_control_characters_in_maildir_mode(smtp_pair: NetPair, tmp_path: Path, char: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        assert (await client.cmd("EHLO client.test")).code == 250
        assert str(await client.cmd(f"MAIL FROM:<s{char}@x.test>")) == BAD_SENDER
        assert (await client.cmd("MAIL FROM:<s@x.test>")).code == 250
        for rcpt in (f"u@x.test{char}.example.test", f"u{char}@example.test", f"u@example.test{char}"):
            assert str(await client.cmd(f"RCPT TO:<{rcpt}>")) == BAD_RECIPIENT, rcpt
        assert (await client.cmd("DATA")).code == 503  # no RCPT got as far as being judged
        assert (await client.cmd("QUIT")).code == 221
        assert e.stored() == []
        assert errors(caplog) == []


async def test_control_characters_leave_no_next_hop_connection(smtp_pair: NetPair, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """20 sessions with NUL or 0x01 in MAIL or RCPT: each refused, no connection left behind."""
    hop = CountingHop()
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        for n in range(20):
            char = CONTROLS[n % 2]
            client = await e.client(PLAIN)
            assert (await client.cmd("EHLO client.test")).code == 250
            if n < 10:
                assert str(await client.cmd(f"MAIL FROM:<s@x.test{char}>")) == BAD_SENDER, n
            else:
                assert (await client.cmd("MAIL FROM:<s@x.test>")).code == 250
                assert str(await client.cmd(f"RCPT TO:<u@x.test{char}.example.test>")) == BAD_RECIPIENT, n
            assert (await client.cmd("QUIT")).code == 221
            await client.close()
        await wait_until_async(lambda: hop.open_connections == 0, "every next-hop connection to close")
        assert hop.connections == 10  # only the sessions whose MAIL was taken reached the next hop
        assert hop.accepted == []
        assert errors(caplog) == []
    await hop.stop()


async def test_next_hop_sink_closes_its_connection_on_any_exception() -> None:
    """The sink's own guard, whatever the session does: aiosmtplib raising at MAIL or RCPT."""
    hop = CountingHop()
    sink = NextHopSink(await hop.start(), 5, "mx.example.test")
    with pytest.raises(ValueError):
        await sink.open("s@x.test\x00", None)
    await wait_until_async(lambda: hop.open_connections == 0, "open() to close its connection")
    txn = await sink.open("s@x.test", None)
    with pytest.raises(ValueError):
        await txn.recipient("u\x01@example.test")
    await wait_until_async(lambda: hop.open_connections == 0, "a failed RCPT to close the connection")
    assert (await txn.recipient("u@example.test")).code == 451  # the transaction is over
    await txn.close()
    await hop.stop()


async def test_close_does_not_wait_for_the_answer_to_quit() -> None:
    hop = CountingHop(mute_quit=True)
    sink = NextHopSink(await hop.start(), 5, "mx.example.test")
    txn = await sink.open("s@x.test", None)
    assert (await txn.recipient("u@example.test")).code == 250
    await asyncio.wait_for(txn.close(), 1)  # the hop never answers the QUIT
    await wait_until_async(lambda: hop.quits_unanswered == 1, "the QUIT to reach the next hop")
    await wait_until_async(lambda: hop.open_connections == 0, "close() to close the connection")
    await hop.stop()


@pytest.mark.parametrize("path", [
    "<s@x.test", "s@x.test", "s@x.test SIZE=10", "<postmaster>", "<s(comment)@x.test>", "<s@x.test>junk",
    "<s@x.test> SIZE=10\x1f", "<s@-x.test>", "<s..t@x.test>",
])
async def test_malformed_sender_paths(smtp_pair: NetPair, tmp_path: Path, path: str) -> None:
    """No brackets, no ``>``, no domain (a reverse-path needs one), comments: RFC 5321 has none."""
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        assert (await client.cmd("EHLO client.test")).code == 250
        assert str(await client.cmd(f"MAIL FROM:{path}")) == BAD_SENDER
        assert (await client.cmd("MAIL FROM:<s@x.test>")).code == 250  # no transaction was started


@pytest.mark.parametrize("path", [
    "<u@example.test", "u@example.test", "<nobody>", "<u@example.test,v@other.test>", "<u @example.test>", "<>",
])
async def test_malformed_recipient_paths(smtp_pair: NetPair, tmp_path: Path, path: str) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("s@x.test")
        assert str(await client.cmd(f"RCPT TO:{path}")) == BAD_RECIPIENT
        assert e.log_lines("To: ") == []


async def test_postmaster_without_domain_in_maildir_mode(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("s@x.test", "postmaster", "PostMaster")
        assert (await client.message()).code == 250
        [name] = e.stored()
        text = (Path(e.maildir) / "new" / name).read_text()
        assert "X-Original-To: <postmaster>\nX-Original-To: <PostMaster>\n" in text


async def test_postmaster_without_domain_passed_to_the_next_hop(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop()
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        await client.envelope("s@x.test", "PostMaster")
        assert (await client.message()).code == 250
        assert [rcpts for _, rcpts, _ in hop.accepted] == [["PostMaster"]]
    await hop.stop()


ROUTED = ("u%x.test@example.test", "x.test!u@example.test", "@a,@b:u@example.test",
          '"u@x.test"@example.test', "u%other.test@sub.example.test")


async def test_routing_forms_refused_to_the_rat_kept_for_relayed_clients(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop()
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        await client.envelope("s@x.test")
        for rcpt in ROUTED:
            answer = await client.cmd(f"RCPT TO:<{rcpt}>")
            assert answer.code == 550 and answer.lines[0].startswith("5.7.1 "), (rcpt, answer)
        relayed = await e.client(RELAY)
        await relayed.envelope("s@x.test", *ROUTED)
        assert (await relayed.message()).code == 250
        assert [rcpts for _, rcpts, _ in hop.accepted] == [list(ROUTED)]  # unchanged
    await hop.stop()


# Recipient forms that must never make the listener relay for a client the RAT judges (the RAT
# accepts example.test, .example.test and postmaster@other.test only).
OPEN_RELAY_FORMS = (
    "u@other.test", "u@example.test.other.test", "u@notexample.test", "u@EXAMPLE.TEST.other.test",
    "u%other.test@example.test", "u%other.test@sub.example.test", "other.test!u@example.test",
    "other.test!u%x.test@example.test", '"u@other.test"@example.test', '"u%other.test"@example.test',
    "@example.test:u@other.test", "@example.test,@sub.example.test:u@other.test", "@other.test:u@example.test",
    "u@other.test\x00.example.test", "u@other.test\x01.example.test", "u@other.test\t.example.test",
    "u@other.test.", "u@example.test@other.test", "u@[192.0.2.1]", "u@[IPv6:2001:db8::1]",
    "u@other.test>.example.test", "postmaster@elsewhere.test", "postmaster@other.test.example",
)


async def test_no_open_relay_in_recipient_forms(smtp_pair: NetPair, tmp_path: Path) -> None:
    e: SmtpEnv = env(smtp_pair, tmp_path)
    async with e:
        client = await e.client(PLAIN)
        await client.envelope("s@x.test")
        taken = []
        for rcpt in OPEN_RELAY_FORMS:
            answer = await client.cmd(f"RCPT TO:<{rcpt}>")
            if answer.code < 500:
                taken.append((rcpt, str(answer)))
        assert taken == []
        assert (await client.cmd("DATA")).code == 554
