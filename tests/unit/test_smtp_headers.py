"""Forged scanner headers: the header fields read from a message's blocks, the authserv-id of an
Authentication-Results field, which fields claim to be ours, and the spool removing them in
memory and spooled (SPEC.md section 8; RFC 8601 section 5)."""

from __future__ import annotations

import asyncio
import io
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpolicy.smtp.headers import HEAD, HeaderField, authserv_id, header_fields
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.scanner import FORGEABLE, claims_to_be_ours
from netpolicy.smtp.spool import BLOCK, SPOOL_THRESHOLD, ByteBudget, Spool

OURS = "mx.example.test"
RECEIVED = b"Received: from a.example (a.example [192.0.2.1])\r\n\tby mx.example.test (netpolicy) with ESMTP id 6\r\n"


def fields(message: bytes, block: int = BLOCK) -> list[tuple[str, bytes]]:
    """(name, the field's bytes) of each forgeable field, ``message`` read in ``block``s."""
    blocks = [message[i:i + block] for i in range(0, len(message), block)]
    return [(f.name, message[f.start:f.end]) for f in header_fields(blocks, FORGEABLE)]


def forged(message: bytes) -> list[bytes]:
    unwanted = claims_to_be_ours(OURS)
    return [message[f.start:f.end] for f in header_fields([message], FORGEABLE) if unwanted(f)]


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
@pytest.mark.parametrize("block", [1, 7, BLOCK])
def test_fields_with_their_folded_lines_crlf_or_bare_lf(newline: bytes, block: int) -> None:
    text = (b"Received: x\r\n\ty\r\nx-spam: No\r\n\t(folded)\r\n  again\r\nSubject: s\r\n"
            b"X-Spam-Score : 1.0\r\nX-Spam-Flag: YES\r\nX-Spammy: 1\r\n\r\nX-Spam: in the body\r\n")
    message = text.replace(b"\r\n", newline)
    assert fields(message, block) == [
        ("x-spam", b"x-spam: No\r\n\t(folded)\r\n  again\r\n".replace(b"\r\n", newline)),
        ("X-Spam-Score", b"X-Spam-Score : 1.0\r\n".replace(b"\r\n", newline)),
    ]


def test_a_message_without_a_body_ends_with_its_last_field() -> None:
    assert fields(b"Subject: s\r\nX-Spam: No\r\n\tstill") == [("X-Spam", b"X-Spam: No\r\n\tstill")]
    assert fields(b"Subject: s\r\nX-Spam: No") == [("X-Spam", b"X-Spam: No")]


def test_the_body_starts_at_a_line_that_is_no_field() -> None:
    assert fields(b"Subject: s\r\nno field here\r\nX-Spam: No\r\n") == []
    assert fields(b"\tcontinues nothing\r\nX-Spam: No\r\n") == []
    assert fields(b"\r\nX-Spam: No\r\n") == []


def test_a_header_section_over_several_blocks_is_read_to_its_end_only() -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 900) for i in range(300))  # ~270 KiB
    message = RECEIVED + filler + b"X-Spam: No\r\n\r\n" + b"body\r\n" + b"x" * (3 * BLOCK)
    header_blocks = (len(message) - 3 * BLOCK) // BLOCK + 1
    taken: list[int] = []

    def blocks() -> Iterator[bytes]:
        for start in range(0, len(message), BLOCK):
            taken.append(start)
            yield message[start:start + BLOCK]

    assert [(f.name, message[f.start:f.end]) for f in header_fields(blocks(), FORGEABLE)] == [("X-Spam", b"X-Spam: No\r\n")]
    assert len(taken) == header_blocks < len(message) // BLOCK + 1  # the body's blocks are not taken


def test_a_field_longer_than_head_keeps_only_its_start() -> None:
    message = b"Authentication-Results: (" + b"c" * 3000 + b") mx.example.test; spf=pass\r\n\r\n"
    (field,) = header_fields([message[i:i + 100] for i in range(0, len(message), 100)], FORGEABLE)
    assert (field.start, field.end) == (0, len(message) - 2)
    assert len(field.head) == HEAD and not field.whole


@pytest.mark.parametrize(("value", "expected"), [
    (b" mx.example.test; spf=pass", "mx.example.test"),
    (b" MX.Example.TEST 1; spf=pass", "mx.example.test"),  # a version after it
    (b" (our gateway) mx.example.test;\r\n\tspf=pass", "mx.example.test"),
    (b"\r\n (a (nested) comment \\) with a quoted paren)\r\n mx.example.test;", "mx.example.test"),
    (b' "mx.example.test"; spf=pass', "mx.example.test"),
    (b" mx.example.test(comment); spf=pass", "mx.example.test"),
    (b" other.example; spf=pass", "other.example"),
    (b" mx.example.test.evil; spf=pass", "mx.example.test.evil"),
    (b"", ""),
    (b" (never closed mx.example.test;", None),
    (b' "never closed; spf=pass', None),
])
def test_authserv_id(value: bytes, expected: str | None) -> None:
    assert authserv_id(value) == expected


def test_an_authserv_id_running_into_the_cut_cannot_be_told() -> None:
    assert authserv_id(b" mx.example.te", whole=False) is None
    assert authserv_id(b" mx.example.test;", whole=False) == "mx.example.test"


def test_forged_fields_are_ours_only() -> None:
    message = (RECEIVED
               + b"X-Spam: No\r\n"
               + b"x-spam-score: -5.00\r\n"
               + b"X-Spam-Flag: NO\r\n"  # not a field netpolicy writes
               + b"X-Spam-Status: No\r\n"
               + b"Authentication-Results: MX.EXAMPLE.TEST 1; spf=pass smtp.mailfrom=a@x.test\r\n"
               + b"Authentication-Results: (relay) mx.example.test;\r\n\tdkim=pass header.d=x.test\r\n"
               + b"Authentication-Results: mx.example.test.; dmarc=pass\r\n"
               + b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a@x.test\r\n"
               + b"Authentication-Results: mx.example.test.other.example; spf=pass\r\n"
               + b"\r\nX-Spam: No\r\nAuthentication-Results: mx.example.test; spf=pass\r\n")
    assert forged(message) == [
        b"X-Spam: No\r\n",
        b"x-spam-score: -5.00\r\n",
        b"Authentication-Results: MX.EXAMPLE.TEST 1; spf=pass smtp.mailfrom=a@x.test\r\n",
        b"Authentication-Results: (relay) mx.example.test;\r\n\tdkim=pass header.d=x.test\r\n",
        b"Authentication-Results: mx.example.test.; dmarc=pass\r\n",
    ]


def test_an_authserv_id_hidden_past_the_head_goes_too() -> None:
    """A sender padding the comment before our name so it cannot be read still loses the field."""
    message = b"Authentication-Results: (" + b"c" * 2000 + b") mx.example.test; spf=pass\r\n\r\n"
    assert forged(message) == [message[:-2]]


def spool_with(message: bytes, tmp_path: Path, threshold: int = SPOOL_THRESHOLD) -> tuple[Spool, ByteBudget]:
    budget = ByteBudget(10**8)
    spool = Spool(budget, str(tmp_path), threshold)
    for start in range(0, len(message), 1500):
        spool.write(message[start:start + 1500])
    return spool, budget


async def remove(spool: Spool) -> dict[str, int]:
    return dict(await spool.remove_header_fields(FORGEABLE, claims_to_be_ours(OURS)))


FORGED = (b"X-Spam: No\r\nAuthentication-Results: mx.example.test; spf=pass\r\n"
          b"Authentication-Results: other.example; spf=fail\r\n")
BODY = b"X-Spam: No\r\nAuthentication-Results: mx.example.test; spf=pass\r\n" * 3  # lines quoted in the body


@pytest.mark.parametrize("size", [2_000, SPOOL_THRESHOLD + 5 * BLOCK])
async def test_the_spool_drops_the_forged_fields_and_their_bytes(tmp_path: Path, size: int) -> None:
    body = BODY + b"x" * size + b"\r\n"
    spool, budget = spool_with(RECEIVED + FORGED + b"Subject: s\r\n\r\n" + body, tmp_path)
    assert spool.spooled == (size > SPOOL_THRESHOLD)
    removed = await remove(spool)
    assert removed == {"X-Spam": 1, "Authentication-Results": 1}
    kept = RECEIVED + b"Authentication-Results: other.example; spf=fail\r\nSubject: s\r\n\r\n" + body
    spool.prepend(b"X-Spam: Yes\r\n")
    assert b"".join(spool.blocks()) == b"X-Spam: Yes\r\n" + kept
    assert spool.size == budget.used == len(kept)
    assert os.listdir(tmp_path) == []
    spool.discard()
    assert budget.used == 0


async def test_a_header_section_spanning_spool_blocks_loses_its_forged_fields(tmp_path: Path) -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 900) for i in range(400))  # ~370 KiB of header
    message = RECEIVED + filler + FORGED + filler + b"X-Spam-Score: 0\r\n\r\n" + BODY
    spool, budget = spool_with(message, tmp_path)
    assert spool.spooled
    assert await remove(spool) == {"X-Spam": 1, "Authentication-Results": 1, "X-Spam-Score": 1}
    kept = RECEIVED + filler + b"Authentication-Results: other.example; spf=fail\r\n" + filler + b"\r\n" + BODY
    assert b"".join(spool.blocks()) == kept and spool.size == budget.used == len(kept)


async def test_nothing_forged_leaves_the_spool_as_it_was(tmp_path: Path) -> None:
    message = RECEIVED + b"Subject: s\r\n\r\n" + BODY + b"y" * SPOOL_THRESHOLD
    spool, budget = spool_with(message, tmp_path)
    assert spool.spooled
    assert await remove(spool) == {}
    assert b"".join(spool.blocks()) == message and budget.used == len(message)


async def test_a_message_that_is_all_forged_header(tmp_path: Path) -> None:
    spool, budget = spool_with(b"X-Spam: No\r\nX-Spam-Score: 0", tmp_path)
    assert await remove(spool) == {"X-Spam": 1, "X-Spam-Score": 1}
    assert b"".join(spool.blocks()) == b"" and spool.size == budget.used == 0


async def test_a_session_cancelled_during_a_spooled_rewrite_leaks_no_file(tmp_path: Path) -> None:
    spool, budget = spool_with(RECEIVED + b"X-Spam: No\r\n" * 60_000 + b"\r\nbody\r\n", tmp_path)
    task = asyncio.ensure_future(remove(spool))
    await asyncio.sleep(0)  # the rewrite is under way in its thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spool.discard()
    await asyncio.get_running_loop().shutdown_default_executor()  # the thread has ended
    assert spool_files(tmp_path) == [] and budget.used == 0


def spool_files(directory: Path) -> list[str]:
    """This process's open files in ``directory`` (nameless ones read ``.../#123 (deleted)``)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # listdir's own descriptor, closed by now
            continue
    return [link for link in links if link.startswith(str(directory))]


async def test_the_mail_log_line(tmp_path: Path) -> None:
    out = io.StringIO()
    log = MailLog(stream=out)
    spool, _ = spool_with(b"x-spam: No\r\nX-SPAM: No\r\nAuthentication-Results: mx.example.test;\r\n\r\n", tmp_path)
    log.forged_removed(6, await spool.remove_header_fields(FORGEABLE, claims_to_be_ours(OURS)))
    log.forged_removed(7, Counter({"X-Spam": 1}))
    log.flush()
    assert out.getvalue().splitlines() == ["MID 6 removed 3 forged header fields (x-spam, Authentication-Results)",
                                           "MID 7 removed 1 forged header field (X-Spam)"]


def test_header_field_value_head() -> None:
    field = HeaderField("X-Spam", 0, 12, b"X-Spam : No\r\n")
    assert field.value_head == b" No\r\n"
