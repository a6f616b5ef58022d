"""A message's header fields, read from the blocks it is held in (RFC 5322 section 2.2).

The scanner removes fields a sender forged in netpolicy's name before it adds its own
(``scanner.claims_to_be_ours``); this module only finds the fields and reads an
``Authentication-Results`` authserv-id, with no policy of its own.

The header section ends at the first empty line, or at the first line that is neither a field
(a name, optional blanks, a colon) nor the continuation of one (a line starting with a blank),
which is where Postfix's cleanup and Python's email parser start the body too; a message with
neither has no body. A line ends at LF, so CRLF and bare LF read the same.

Memory stays bounded whatever the sender wrote: a line is read by its first ``HEAD`` bytes
(a line is a field only when its colon lies within them), enough for any line SMTP lets
through (``lines.read_message`` refuses longer ones); a field is kept only up to ``HEAD``
bytes, where its name and an authserv-id sit. Offsets count from the first byte of the blocks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

HEAD = 1001  # RFC 5321's line limit with CRLF and a stuffed dot, as lines.read_message applies it

_BLANK = b" \t"
_CONTINUATION = re.compile(rb"(?:[ \t][^\n]*(?:\n|\Z))*")  # the continuation lines from a line start on
_FIELD_END = re.compile(rb"\n(?![ \t])")  # the LF before a line that does not continue the field


@dataclass(frozen=True)
class HeaderField:
    """One field: where it lies in the message and its first ``HEAD`` bytes (folding kept)."""

    name: str
    start: int  # offset of its first byte
    end: int  # offset just past its last line's LF (or the end of the message)
    head: bytes

    @property
    def value_head(self) -> bytes:
        """The start of the value: what follows the colon within ``head``."""
        return self.head[self.head.index(b":") + 1:]

    @property
    def whole(self) -> bool:
        """``head`` holds the whole field."""
        return self.end - self.start == len(self.head)


@functools.lru_cache(maxsize=8)
def _starts(names: frozenset[str]) -> re.Pattern[bytes]:
    """Matches where a field named one of ``names`` starts (group 1: its name), or, empty,
    where the header section ends (a line that is neither a field nor a continuation)."""
    alternatives = b"|".join(re.escape(n.encode("ascii")) for n in sorted(names, key=len, reverse=True))
    colon = rb"(?=[^:\n]{0,%d}:)" % (HEAD - 1)  # a colon within the line's first HEAD bytes
    field = colon + rb"[\x21-\x39\x3b-\x7e]+[ \t]*:"
    return re.compile(rb"(?im)^(?:" + colon + rb"(" + alternatives + rb")[ \t]*:|(?![ \t]|" + field + rb"))")


class _Reader:
    """``header_fields``'s state between blocks."""

    def __init__(self, names: frozenset[str]) -> None:
        self.starts = _starts(names)
        self.open: tuple[str, int, bytearray] | None = None  # a field whose end is not seen yet: name, start, head
        self.done = False  # the header section has ended

    def window(self, window: bytes, base: int, complete: int) -> Iterator[HeaderField]:
        """Read ``window[:complete]`` (whole lines, or the message's last bytes), which starts
        at offset ``base`` and at the start of a line."""
        pos = 0
        if base == 0 and window[:1] in (b" ", b"\t"):  # a continuation of no field: the body
            self.done = True
            return
        if self.open is not None:
            continued = _CONTINUATION.match(window, 0, complete)
            assert continued is not None  # the pattern matches the empty string
            pos = continued.end()
            self._extend(window[:pos])
            if pos == complete:
                return
            yield self._close(base + pos)
        while True:
            match = self.starts.search(window, pos, complete)
            if match is None or match.start() == complete:
                return
            if match.group(1) is None:
                self.done = True
                return
            start = match.start()
            name = match.group(1).decode("ascii")
            end = _FIELD_END.search(window, start, complete)
            if end is None or end.end() == complete:  # it may go on in the next block
                self.open = (name, base + start, bytearray(window[start:min(complete, start + HEAD)]))
                return
            pos = end.end()
            yield HeaderField(name, base + start, base + pos, window[start:min(pos, start + HEAD)])

    def long_line(self, line: bytes, base: int) -> Iterator[HeaderField]:
        """A line longer than ``HEAD`` starting at ``base``, read by its first ``HEAD`` bytes."""
        if self.open is not None and line[0] in _BLANK:
            self._extend(line)
            return
        if self.open is not None:
            yield self._close(base)
        match = self.starts.match(line)
        if match is None:  # another field, or a continuation of one
            return
        if match.group(1) is None:
            self.done = True
            return
        self.open = (match.group(1).decode("ascii"), base, bytearray(line))

    def finish(self, end: int) -> Iterator[HeaderField]:
        if self.open is not None:
            yield self._close(end)

    def _extend(self, data: bytes) -> None:
        assert self.open is not None
        head = self.open[2]
        if len(head) < HEAD:
            head += data[:HEAD - len(head)]

    def _close(self, end: int) -> HeaderField:
        assert self.open is not None
        name, start, head = self.open
        self.open = None
        return HeaderField(name, start, end, bytes(head))


def header_fields(blocks: Iterable[bytes], names: frozenset[str]) -> Iterator[HeaderField]:
    """The fields of the header section named one of ``names`` (in lower case), in order.
    Stops taking blocks where the section ends, so the body of a spooled message is never read.

    The other fields are passed over by one regular expression per block, not line by line
    in Python: a 10 MB header section of five-byte fields takes 0.3 s this way, 5.7 s in a
    loop over its lines. A line with no LF within ``HEAD`` bytes (which SMTP never lets
    through) is read by its start and the rest of it skipped, so no more than a block and a
    line's start are held.
    """
    reader = _Reader(names)
    offset = 0  # of the first byte not yet read
    carry = b""  # the start of the line the previous block ended in
    skipping = False  # inside a long line already read: drop bytes up to its LF
    for block in blocks:
        first = 0  # of the block's bytes to read
        if skipping:
            lf = block.find(b"\n")
            if lf < 0:
                offset += len(block)
                continue
            skipping = False
            offset += lf + 1
            first = lf + 1
        window = carry + block[first:]
        complete = window.rfind(b"\n") + 1
        yield from reader.window(window, offset, complete)
        if reader.done:
            return
        carry = window[complete:]
        offset += complete
        if len(carry) > HEAD:
            yield from reader.long_line(carry[:HEAD], offset)
            if reader.done:
                return
            skipping = True
            offset += len(carry)
            carry = b""
    if carry:
        yield from reader.window(carry, offset, len(carry))
        offset += len(carry)
    yield from reader.finish(offset)


_TOKEN = re.compile(rb"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]*")  # RFC 2045 token characters
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def authserv_id(value: bytes, whole: bool = True) -> str | None:
    """The authserv-id an ``Authentication-Results`` value starts with (RFC 8601 section 2.2:
    a token or quoted string after optional comments and blanks), in lower case; what follows
    it (a version, the results) is not read. None when it cannot be told: a comment or quoted
    string left open, or, in a value cut short (``whole`` false), a token reaching the cut."""
    pos = _skip_cfws(value, 0)
    if pos is None:
        return None
    quoted = _QUOTED.match(value, pos)
    if quoted is not None:
        text = re.sub(rb"\\(.)", rb"\1", quoted.group(1), flags=re.DOTALL)
    elif value[pos:pos + 1] == b'"':
        return None
    else:
        token = _TOKEN.match(value, pos)
        assert token is not None  # the pattern matches the empty string
        if not whole and token.end() == len(value):
            return None
        text = token.group()
    return text.decode("latin-1").lower()


def _skip_cfws(value: bytes, pos: int) -> int | None:
    """The offset past blanks, line breaks and (nested) comments from ``pos``; None when a
    comment is still open at the end."""
    depth = 0
    size = len(value)
    while pos < size:
        char = value[pos]
        if char in b" \t\r\n":
            pos += 1
        elif char == 0x28:  # (
            depth += 1
            pos += 1
        elif depth == 0:
            return pos
        elif char == 0x29:  # )
            depth -= 1
            pos += 1
        else:  # comment text; a backslash quotes the character after it
            pos += 2 if char == 0x5C else 1
    return None if depth else pos
