"""Reading SMTP lines strictly: CRLF only, bounded length, size enforced while reading.

SMTP smuggling works because servers disagree on where a message ends: one takes ``\\n.\\n`` or
``\\r.\\n`` as the end of DATA, the next hop does not, and the bytes after it become commands
of a second, forged message. Accepting only CRLF-terminated lines with no other CR or LF
anywhere leaves exactly one reading of any stream, so a bare CR or LF is refused outright
(``BareNewline``), in commands and in message text alike.

Memory per connection stays bounded: the StreamReader never buffers more than about twice its
line limit (asyncio pauses the socket), an over-long line is discarded as it arrives, and the
message is kept only while it is within the size limit; past it the rest is read and dropped
so the conversation stays in step, and the reply after DATA says why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class BareNewline(Exception):
    """A CR or LF that is not part of a CRLF pair."""


class LineTooLong(Exception):
    """A command line longer than the reader's limit (already discarded)."""


def is_strict(line: bytes) -> bool:
    """True for a line ending in CRLF with no other CR or LF (LF can only be last: readuntil)."""
    n = len(line)
    return n >= 2 and line[n - 2] == 13 and line.find(b"\r", 0, n - 2) == -1


async def read_command(reader: asyncio.StreamReader) -> bytes:
    """One command line without its CRLF. Raises BareNewline, LineTooLong, IncompleteReadError."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        await _discard_line(reader, exc.consumed)
        raise LineTooLong() from None
    if not is_strict(line):
        raise BareNewline()
    return line[:-2]


async def _discard_line(reader: asyncio.StreamReader, consumed: int) -> None:
    """Drop an over-long line up to and including its LF, never holding more than the limit."""
    await reader.readexactly(consumed)
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


@dataclass(frozen=True)
class MessageData:
    content: bytes | None  # the message (CRLF lines, dots unstuffed); None when refused
    size: int  # bytes the client sent (unstuffed), counted even past the limit
    problem: str | None  # None, "size" or "line"


async def read_message(reader: asyncio.StreamReader, size_limit: int) -> MessageData:
    """Read DATA up to the lone ``.`` line. Raises BareNewline and IncompleteReadError."""
    parts: list[bytes] = []
    size = 0
    problem: str | None = None
    at_line_start = True
    cr_pending = False  # an over-long fragment ended in CR: its LF may start the next read
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            # Part of an over-long line: drop it; the rest arrives as a later "line".
            fragment = await reader.readexactly(exc.consumed)
            if cr_pending or fragment.find(b"\r", 0, len(fragment) - 1) != -1:
                raise BareNewline() from None
            cr_pending = fragment.endswith(b"\r")
            size += len(fragment)
            problem = problem or "line"
            parts.clear()
            at_line_start = False
            continue
        if not (is_strict(line) and not cr_pending or cr_pending and line == b"\n"):
            raise BareNewline()
        cr_pending = False
        if at_line_start:
            if line == b".\r\n":
                break
            if line[:1] == b".":
                line = line[1:]
        at_line_start = True
        size += len(line)
        if problem is None and size > size_limit:
            problem = "size"
            parts.clear()
        if problem is None:
            parts.append(line)
    return MessageData(None if problem else b"".join(parts), size, problem)
