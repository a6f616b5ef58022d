"""Reading SMTP lines strictly: CRLF only, bounded length, size enforced while reading.

SMTP smuggling works because servers disagree on where a message ends: one takes ``\\n.\\n`` or
``\\r.\\n`` as the end of DATA, the next hop does not, and the bytes after it become commands
of a second, forged message. Accepting only CRLF-terminated lines with no other CR or LF
anywhere leaves exactly one reading of any stream, so a bare CR or LF is refused outright
(``BareNewline``), in commands and in message text alike.

Memory per connection stays bounded: the StreamReader's limit is the line limit, so asyncio
pauses the socket once about twice that is buffered (plus at most one socket read); an
over-long command line is discarded as it arrives; a message is kept only while it is within
its size limit, free of over-long lines and NUL, and within the process's in-flight budget
(``spool.py``). Past that the rest is read and dropped, so the conversation stays in step, and
the reply after DATA says why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from netpolicy.smtp.spool import BudgetExceeded, Spool


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
    """What became of a message read into a spool (the spool holds it when ``problem`` is None)."""

    size: int  # bytes the client sent, dots unstuffed
    problem: str | None  # None, "size", "line", "nul", "busy" (in-flight budget) or "storage"
    error: OSError | None = None  # the spool's write error when problem is "storage"


def _check_newlines(piece: bytes, cr_pending: bool) -> bool:
    """Raise BareNewline unless every CR and LF in ``piece`` is part of a CRLF pair.

    ``cr_pending``: the previous piece ended in CR, so this one must start with LF. Returns
    whether this piece ends in a CR whose LF is still to come.
    """
    crlf = piece.count(b"\r\n")
    lf = piece.count(b"\n")
    cr = piece.count(b"\r")
    if cr_pending:
        if piece[:1] != b"\n":
            raise BareNewline()
        lf -= 1
    ends_cr = piece[-1:] == b"\r"
    if ends_cr:
        cr -= 1
    if lf != crlf or cr != crlf:
        raise BareNewline()
    return ends_cr


async def read_message(reader: asyncio.StreamReader, spool: Spool, size_limit: int, line_limit: int = 1001) -> MessageData:
    """Read DATA up to the lone ``.`` line into ``spool``. Raises BareNewline and IncompleteReadError.

    The stream is taken in pieces ending at each ``.<CRLF>`` (or whatever the buffer holds when
    none is there yet), not line by line: a typical message costs two reads instead of one per
    line, and the checks (newlines, line length, NUL) and the unstuffing run over whole pieces
    at C speed. Each piece goes to the spool as soon as it is unstuffed, so the message is held
    once. ``line_limit`` counts a line with its CRLF (RFC 5321: 1000, plus one stuffed dot).

    A NUL refuses the message: RFC 5322 text (and RFC 6152's 8bit data) excludes it, and a
    stored NUL truncates the message for any C-string consumer downstream; stripping it would
    alter what the sender signed (DKIM), so the sender hears why instead (Postfix does the same
    with ``message_reject_characters = \\0``).
    """
    size = 0
    problem: str | None = None
    error: OSError | None = None
    cr_pending = False  # the previous piece ended in CR
    at_line_start = True  # the next byte starts a line
    run = 0  # length of the line still open at the end of the previous piece
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
            terminated = True
        except asyncio.LimitOverrunError as exc:
            piece = await reader.readexactly(exc.consumed)
            terminated = False
        cr_pending = _check_newlines(piece, cr_pending)
        if terminated and ((len(piece) == 3 and at_line_start) or piece[-4:-3] == b"\n"):
            tail = piece[:-3]  # what precedes the lone dot
            end = True
        else:
            tail = piece
            end = False
        if tail:
            # Unstuff (RFC 5321 4.5.2): a dot that starts a line was added by the client.
            text = tail.replace(b"\n.", b"\n")
            if at_line_start and text[:1] == b".":
                text = text[1:]
            size += len(text)
            if problem is None:
                first_lf = tail.find(b"\n")
                if run + (first_lf + 1 if first_lf >= 0 else len(tail)) > line_limit or (
                    len(tail) > line_limit and max(map(len, tail.split(b"\n"))) >= line_limit
                ):
                    problem = "line"
                elif size > size_limit:
                    problem = "size"
                elif b"\0" in text:
                    problem = "nul"
                else:
                    try:
                        spool.write(text)
                    except BudgetExceeded:
                        problem = "busy"
                    except OSError as exc:
                        problem, error = "storage", exc
                if problem is not None:
                    spool.discard()
            last_lf = tail.rfind(b"\n")
            run = run + len(tail) if last_lf < 0 else len(tail) - last_lf - 1
        if end:
            break
        at_line_start = piece[-1:] == b"\n"
    return MessageData(size, problem, error)
