"""SPEC.md section 3, row by row: real clients in one namespace, the listener in another.

Each client connects from an address of a different sender group, so the reply it gets is the
HAT decision for that address, not a configured default.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from netpolicy.smtp import SmtpListener
from netpolicy.smtp.listener import listening_socket
from netpolicy.smtp.maillog import MailLog
from tests.support.smtp import (
    HARVESTER,
    LISTED,
    PLAIN,
    REJECTED,
    RELAY,
    SPAMMY,
    THROTTLED,
    TRUSTED,
    FakeResolver,
    RawClient,
    build,
    env,
    policy_dict,
    smtp_pair,
)
from tests.support.netns import NetPair
from tests.support.wait import wait_until_async

__all__ = ["smtp_pair"]  # the module-scoped fixture


async def test_accept_banner_expands_variables(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(TRUSTED, banner=None)
        answer = await client.answer()
        assert str(answer) == f"220 mx.example.test welcomes {TRUSTED} (WHITELIST/TRUSTED)"
        await client.envelope("a@sender.test", "b@example.test")
        assert (await client.message()).code == 250
        assert (await client.cmd("QUIT")).code == 221
        assert len(e.stored()) == 1
        await wait_until_async(lambda: e.log_lines("close"), "the close log line")
        assert e.log_lines()[:2] == [
            f"New SMTP ICID 1 interface Inbound ({smtp_pair.server_v4}) address {TRUSTED} reverse dns host unknown verified no",
            f"ICID 1 ACCEPT SG WHITELIST match {TRUSTED}",
        ]
        assert e.log_lines("^Start MID 2 ICID 1$") and e.log_lines("^MID 2 ICID 1 RID 0 To: <b@example.test>$")
        assert e.log_lines(r"^MID 2 ready \d+ bytes from <a@sender.test>$") and e.log_lines("^ICID 1 close$")


async def test_reject_at_connect(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(REJECTED, banner=None)
        answer = await client.answer()
        assert str(answer) == f"554 {REJECTED} is not welcome here"
        assert await client.at_eof()
        assert e.log_lines(f"^ICID 1 REJECT SG REJECTLIST match {REJECTED}$")
        assert e.offences == [(REJECTED, "REJECTLIST", "reject")]


async def test_reject_by_verified_host_name(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(SPAMMY, banner=None)
        assert (await client.answer()).code == 554
        assert await client.at_eof()
        assert e.log_lines(f"address {SPAMMY} reverse dns host mx1.spam.example verified yes$")
        assert e.log_lines("REJECT SG REJECTLIST match .spam.example$")


async def test_dnslisted_host_gets_its_group(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(LISTED)
        answer = await client.cmd("EHLO client.test")
        assert "SIZE 4096" in answer.lines  # THROTTLED's max_message_size
        assert e.log_lines(r"ACCEPT SG SUSPECTLIST match dnslist\[bl.example.test\]$")


async def test_delayed_reject(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path, delayed_reject=True) as e:
        client = await e.client(REJECTED)
        await client.envelope("a@sender.test")
        for rcpt in ("b@example.test", "c@example.test"):
            answer = await client.cmd(f"RCPT TO:<{rcpt}>")
            assert str(answer) == f"554 5.7.1 {REJECTED} is not welcome here"
        answer = await client.cmd("DATA")
        assert answer.code == 554 and answer.lines[0].startswith("5.5.1 ")
        assert e.log_lines(f"^ICID 1 Delayed REJECT SG REJECTLIST match {REJECTED}$")
        assert len(e.log_lines(r"To: <[bc]@example.test> Rejected by delayed REJECT$")) == 2
        assert e.stored() == []


async def test_max_concurrency(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        first, second = await e.client(THROTTLED), await e.client(THROTTLED)
        third = await e.client(THROTTLED, banner=None)
        answer = await third.answer()
        assert answer.code == 421 and answer.lines[0].startswith("4.7.0 ")
        assert await third.at_eof()
        assert e.log_lines("Connection refused: max_concurrency 2 reached$")
        other = await e.client(PLAIN)  # the limit is per client address
        assert (await other.cmd("QUIT")).code == 221
        assert (await first.cmd("QUIT")).code == 221
        assert await first.at_eof()
        await wait_until_async(lambda: e.counters.connections(THROTTLED) == 1, "the throttled connection to be counted")
        fourth = await e.client(THROTTLED)
        for c in (second, fourth):
            assert (await c.cmd("QUIT")).code == 221


async def test_max_msgs_per_session(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(THROTTLED)
        assert (await client.cmd("EHLO client.test")).code == 250
        for _ in range(3):
            assert (await client.cmd("MAIL FROM:<a@sender.test>")).code == 250
            assert (await client.cmd("RCPT TO:<b@example.test>")).code == 250
            assert (await client.message()).code == 250
        answer = await client.cmd("MAIL FROM:<a@sender.test>")
        assert answer.code == 421 and answer.lines[0].startswith("4.7.0 ")
        assert await client.at_eof()
        assert len(e.stored()) == 3
        assert e.log_lines("Session closed: max_msgs_per_session 3 reached$")


async def test_max_rcpts_per_msg(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(THROTTLED)
        await client.envelope("a@sender.test", "r1@example.test", "r2@example.test", "r3@example.test")
        answer = await client.cmd("RCPT TO:<r4@example.test>")
        assert answer.code == 452 and answer.lines[0].startswith("4.5.3 ")
        assert (await client.message()).code == 250


async def test_max_rcpts_per_hour_spans_connections(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        first = await e.client(THROTTLED)
        await first.envelope("a@sender.test", "r1@example.test", "r2@example.test", "r3@example.test")
        assert (await first.message()).code == 250
        second = await e.client(THROTTLED)
        await second.envelope("a@sender.test", "r4@example.test", "r5@example.test")
        answer = await second.cmd("RCPT TO:<r6@example.test>")
        assert str(answer) == "452 4.7.0 Too many recipients received this hour"
        assert (THROTTLED, "SUSPECTLIST", "rate-limit") in e.offences
        assert e.log_lines("To: <r6@example.test> Rejected by rate limit$")


async def test_rate_limit_code_and_text_from_policy(smtp_pair: NetPair, tmp_path: Path) -> None:
    e = env(smtp_pair, tmp_path)
    e.data["mail_flow_policies"]["ACCEPTED"].update(
        {"max_rcpts_per_hour": 1, "rate_limit_code": 450, "rate_limit_text": "Slow down, $RemoteIP"})
    async with e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "r1@example.test")
        assert str(await client.cmd("RCPT TO:<r2@example.test>")) == f"450 4.7.0 Slow down, {PLAIN}"


async def test_max_message_size(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(THROTTLED)
        ehlo = await client.cmd("EHLO client.test")
        assert "SIZE 4096" in ehlo.lines
        answer = await client.cmd("MAIL FROM:<a@sender.test> SIZE=5000")
        assert answer.code == 552 and answer.lines[0].startswith("5.3.4 ")
        assert (await client.cmd("MAIL FROM:<a@sender.test> SIZE=1000")).code == 250  # a lie
        assert (await client.cmd("RCPT TO:<b@example.test>")).code == 250
        big = b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n"
        answer = await client.message(big * 100)
        assert answer.code == 552 and answer.lines[0].startswith("5.3.4 ")
        assert e.log_lines("Receiving Failed: Message Size Too Large$")
        await client.envelope("a@sender.test", "b@example.test")  # the session goes on
        assert (await client.message()).code == 250
        assert len(e.stored()) == 1


async def test_rat(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "b@example.test", "c@sub.example.test", "postmaster@other.test")
        answer = await client.cmd("RCPT TO:<someone@other.test>")
        assert answer.code == 550 and answer.lines[0].startswith("5.7.1 ")
        assert e.log_lines("To: <someone@other.test> Rejected by RAT$")
        assert (await client.message()).code == 250
        relay = await e.client(RELAY)  # RELAY skips the RAT
        await relay.envelope("a@sender.test", "someone@other.test")
        assert (await relay.message()).code == 250


async def test_private_listener_has_no_rat(smtp_pair: NetPair, tmp_path: Path) -> None:
    e = env(smtp_pair, tmp_path, type="private", rat=None)
    async with e:
        client = await e.client(PLAIN)
        await client.envelope("a@sender.test", "anyone@anywhere.test")


async def test_dhap(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(HARVESTER)
        await client.envelope("a@sender.test")
        for n in (1, 2):
            answer = await client.cmd(f"RCPT TO:<guess{n}@other.test>")
            assert answer.code == 550 and "Recipient address rejected" in answer.text
        answer = await client.cmd("RCPT TO:<guess3@other.test>")
        assert str(answer) == f"550 5.7.1 Too many invalid recipients from {HARVESTER}"
        # Past the threshold even valid recipients are refused: nothing left to harvest.
        assert str(await client.cmd("RCPT TO:<b@example.test>")) == f"550 5.7.1 Too many invalid recipients from {HARVESTER}"
        assert e.offences == [(HARVESTER, "DHAPLIST", "dhap")]
        other = await e.client(PLAIN)
        await other.envelope("a@sender.test", "b@example.test")


async def test_reload_keeps_open_sessions_on_their_generation(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        assert e.listener is not None
        before = await e.client(PLAIN)
        data = policy_dict(smtp_pair.server_v4, e.maildir)
        data["mail_flow_policies"]["ACCEPTED"] = {"behavior": "reject", "reject_banner_text": "closed for $RemoteIP"}
        policy, hat = build(data)
        sink = e.listener._generation.sink
        e.listener.swap_hat(hat, policy.listener("Inbound"))
        assert e.listener._generation.sink is sink  # same delivery: the writer pool is kept
        after = await e.client(PLAIN, banner=None)
        assert str(await after.answer()) == f"554 closed for {PLAIN}"
        await before.envelope("a@sender.test", "b@example.test")
        assert (await before.message()).code == 250


async def test_swaks_from_a_group_address(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        proc = await asyncio.to_thread(
            smtp_pair.client.exec,
            ["swaks", "--server", f"{smtp_pair.server_v4}:2525", "--local-interface", PLAIN,
             "--from", "a@sender.test", "--to", "b@example.test", "--helo", "client.test"],
            False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "250 2.0.0 Ok: stored as" in proc.stdout
        assert len(e.stored()) == 1


async def test_dual_stack_listener(smtp_pair: NetPair, tmp_path: Path) -> None:
    """``address: "::"`` serves IPv4 and IPv6 clients, and IPv4 ones keep their IPv4 groups."""
    e = env(smtp_pair, tmp_path)
    e.data["listeners"][0]["address"] = "::"
    sock = smtp_pair.server.call(lambda: listening_socket("::", 2526))
    policy, hat = build(e.data)
    listener = SmtpListener(policy.listener("Inbound"), hat, FakeResolver(), MailLog(stream=e.log))
    await listener.start(sock=sock)
    try:
        for dest, source in (((smtp_pair.server_v4, 2526), REJECTED), ((smtp_pair.server_v6, 2526), None)):
            client = await RawClient.open(smtp_pair.client, dest, source)
            assert (await client.answer()).code == (554 if source else 220)
            await client.close()
    finally:
        await listener.stop(grace=0.1)
    assert e.log_lines(f"REJECT SG REJECTLIST match {REJECTED}$")
    assert e.log_lines(f"address {smtp_pair.client_v6} reverse dns")
