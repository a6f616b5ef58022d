"""Hand-off faults: the client never gets 250 for a message the next hop did not take.

Next hops: Postfix's ``smtp-sink`` (a real SMTP server with fault switches) and a scripted
server whose every answer the test chooses (tests/support/next_hop.py). Both listen on the host's
loopback, where the listener's outgoing connections start (see tests/support/smtp.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import NetPair
from tests.support.next_hop import ScriptedHop, hop_env
from tests.support.smtp import HARVESTER, PLAIN, smtp_pair
from tests.support.wait import wait_until

__all__ = ["smtp_pair"]


@pytest.fixture
def sink_port() -> Iterator[int]:
    """smtp-sink on the host's loopback; the fault switches go on the command line per test."""
    if not shutil.which("smtp-sink"):
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


def run_sink(port: int, *switches: str) -> subprocess.Popen[bytes]:
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(["smtp-sink", *user, *switches, f"127.0.0.1:{port}", "64"], start_new_session=True)

    def accepting() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    try:
        wait_until(accepting, "smtp-sink to accept connections", ignoring=(OSError,))
    except AssertionError:
        proc.kill()
        raise
    return proc


def stop_sink(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=5)


async def test_relays_through_smtp_sink(smtp_pair: NetPair, tmp_path: Path, sink_port: int) -> None:
    sink = run_sink(sink_port)
    try:
        async with hop_env(smtp_pair, tmp_path, f"127.0.0.1:{sink_port}") as e:
            client = await e.client(PLAIN)
            await client.envelope("a@sender.test", "b@example.test")
            assert (await client.message()).code == 250
            assert e.listener is not None and e.listener.stats.messages_delivered == 1
            assert e.log_lines(f"delivered to next hop 127.0.0.1:{sink_port}$")
    finally:
        stop_sink(sink)


async def test_smtp_sink_soft_rejecting_recipients(smtp_pair: NetPair, tmp_path: Path, sink_port: int) -> None:
    sink = run_sink(sink_port, "-r", "rcpt")
    try:
        async with hop_env(smtp_pair, tmp_path, f"127.0.0.1:{sink_port}") as e:
            client = await e.client(PLAIN)
            await client.envelope("a@sender.test")
            answer = await client.cmd("RCPT TO:<b@example.test>")
            assert 400 <= answer.code < 500  # smtp-sink's own 4xx, passed on
            assert (await client.cmd("DATA")).code == 554  # no valid recipients: nothing to lose
    finally:
        stop_sink(sink)


async def test_smtp_sink_hanging_up_at_end_of_data(smtp_pair: NetPair, tmp_path: Path, sink_port: int) -> None:
    sink = run_sink(sink_port, "-q", ".")
    try:
        async with hop_env(smtp_pair, tmp_path, f"127.0.0.1:{sink_port}") as e:
            client = await e.client(PLAIN)
            await client.envelope("a@sender.test", "b@example.test")
            answer = await client.message()
            assert answer.code == 451 and answer.lines[0].startswith("4.4.1 ")
            assert e.listener is not None and e.listener.stats.messages_temp_failed == 1
    finally:
        stop_sink(sink)


async def test_next_hop_down(smtp_pair: NetPair, tmp_path: Path, sink_port: int) -> None:
    async with hop_env(smtp_pair, tmp_path, f"127.0.0.1:{sink_port}") as e:  # nothing listens there
        client = await e.client(PLAIN)
        assert (await client.cmd("EHLO client.test")).code == 250
        answer = await client.cmd("MAIL FROM:<a@sender.test>")
        assert answer.code == 451 and answer.lines[0].startswith("4.4.1 ")
        assert "unreachable" in answer.text


async def test_per_recipient_answers_are_passed_on(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop(rcpt_replies={"busy@example.test": "450 4.2.1 Mailbox busy",
                                    "nobody@example.test": "550 5.1.1 No such user"})
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        assert str(await client.cmd("RCPT TO:<busy@example.test>")) == "450 4.2.1 Mailbox busy"
        assert str(await client.cmd("RCPT TO:<nobody@example.test>")) == "550 5.1.1 No such user"
        assert str(await client.message(b"Subject: hi\r\n\r\n..leading dot\r\n")) == "250 2.0.0 Ok: queued as HOP1"
        [(sender, rcpts, body)] = hop.accepted  # body as on the wire: dot-stuffed again
        assert (sender, rcpts) == ("a@sender.test", ["b@example.test"])
        assert body.startswith(b"Received: from client.test") and body.endswith(b"Subject: hi\r\n\r\n..leading dot\r\n")
        assert e.log_lines("To: <nobody@example.test> Rejected by next hop")
    await hop.stop()


async def test_unknown_users_at_the_next_hop_count_towards_dhap(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop(rcpt_replies={f"guess{n}@example.test": "550 5.1.1 No such user" for n in range(5)})
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(HARVESTER)
        await client.envelope("a@sender.test")
        for n in (0, 1):
            assert str(await client.cmd(f"RCPT TO:<guess{n}@example.test>")) == "550 5.1.1 No such user"
        assert str(await client.cmd("RCPT TO:<guess2@example.test>")) == f"550 5.7.1 Too many invalid recipients from {HARVESTER}"
        assert e.offences == [(HARVESTER, "DHAPLIST", "dhap")]
    await hop.stop()


@pytest.mark.parametrize(("data_reply", "expected_code"), [("452 4.3.1 Queue full", 451), ("554 5.6.0 Content refused", 554)])
async def test_next_hop_refusing_the_message(smtp_pair: NetPair, tmp_path: Path, data_reply: str, expected_code: int) -> None:
    hop = ScriptedHop(data_reply=data_reply)
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        answer = await client.message()
        assert answer.code == expected_code
        if expected_code == 451:
            assert answer.lines[0].startswith("4.4.1 ") and "452 4.3.1 Queue full" in answer.text
        else:
            assert str(answer) == data_reply
        assert hop.accepted == []
    await hop.stop()


@pytest.mark.parametrize(("mail_reply", "expected"), [("421 4.3.2 Try later", "451 4.4.1"), ("553 5.7.1 Sender refused", "553 5.7.1")])
async def test_next_hop_refusing_the_sender(smtp_pair: NetPair, tmp_path: Path, mail_reply: str, expected: str) -> None:
    hop = ScriptedHop(mail_reply=mail_reply)
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        assert (await client.cmd("EHLO client.test")).code == 250
        assert str(await client.cmd("MAIL FROM:<a@sender.test>")).startswith(expected)
    await hop.stop()


async def test_next_hop_dropping_mid_data(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop(drop_after=1000)
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        answer = await client.message(b"Subject: long\r\n\r\n" + b"y" * 78 + b"\r\n" * 1 + (b"z" * 78 + b"\r\n") * 300)
        assert answer.code == 451 and answer.lines[0].startswith("4.4.1 ")
        assert hop.accepted == []
        await client.envelope("a@sender.test", "b@example.test")  # the client may retry at once
    await hop.stop()


async def test_next_hop_timing_out(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop(mute_after_data=True)
    async with hop_env(smtp_pair, tmp_path, await hop.start(), timeout=1) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test")
        started = time.monotonic()
        answer = await client.message()
        assert answer.code == 451 and answer.lines[0].startswith("4.4.1 ")
        assert time.monotonic() - started < 4
    await hop.stop()
