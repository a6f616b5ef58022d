"""Where a message lives between DATA and its hand-off: held once, in memory or in a file.

A message is appended piece by piece as the reader unstuffs it and handed to the sink as a
sequence of blocks; no step builds the whole message as one ``bytes``. Holding each 9.5 MB
message whole and copying it about five times took serve to 1.0 GB RSS for 30 parallel
senders (security review, issue 10).

- Up to ``SPOOL_THRESHOLD`` (256 KiB) a message stays in memory: most mail is far smaller
  (typical text mail is a few KiB, a message with an attachment a few hundred), so the common
  case costs no file, and N sessions hold at most N x 256 KiB in memory whatever the senders
  do. Past it, the message moves to a nameless file (``O_TMPFILE``, via
  ``tempfile.TemporaryFile``) in ``directory``: a killed process leaves no spool file behind,
  so there is nothing to clean at start.
- Every byte held, in memory or spooled, is counted in one ``ByteBudget`` of
  ``SessionLimits.inflight_bytes`` shared by every session of the process (``serve`` hands the
  same one to each listener, as it does its ``FdWatch``). A message that
  would overrun it is dropped (``BudgetExceeded``) and the client hears a 4xx at the end;
  DATA is refused before the 354 when less than ``DATA_FLOOR`` is free.

File writes go to the page cache in 64 KiB blocks from the event loop: there is no fsync on a
spool file (the Maildir sink fsyncs its own copy), so a write costs a memory copy, not a disk
wait.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from netpolicy.smtp.headers import HeaderField, header_fields

SPOOL_THRESHOLD = 256 * 1024
BLOCK = 64 * 1024  # write and read size once spooled: few syscalls, little memory
DATA_FLOOR = 64 * 1024  # less free budget than a typical message: refuse DATA before the 354


class BudgetExceeded(Exception):
    """The in-flight byte budget of the process cannot hold this message."""


class ByteBudget:
    """Bytes of messages in flight (being received or handed off), across every session."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def take(self, n: int) -> bool:
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class Spool:
    """One message: appended to while received, read back in blocks by the sink.

    ``write`` raises ``BudgetExceeded`` or ``OSError`` (the spool file's disk is full); the
    caller then ``discard``s what was held and keeps reading the client's data to its end.
    """

    def __init__(self, budget: ByteBudget, directory: str | None = None, threshold: int = SPOOL_THRESHOLD) -> None:
        self.budget = budget
        self.directory = directory
        self.threshold = threshold
        self.size = 0  # bytes held (and taken from the budget)
        self._buffer = bytearray()  # the whole message while in memory; the unwritten tail once spooled
        self._file: int | None = None  # descriptor of the nameless spool file
        self._head = b""  # header fields put in front once the message is held (prepend)

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self.budget.take(len(data)):
            raise BudgetExceeded()
        self.size += len(data)
        self._buffer += data
        if self._file is None:
            if len(self._buffer) <= self.threshold:
                return
            self._file = _new_file(self.directory)
        if len(self._buffer) >= BLOCK:
            self._flush()

    def _flush(self) -> None:
        assert self._file is not None
        view = memoryview(self._buffer)
        try:
            while view:
                view = view[os.write(self._file, view):]
        finally:
            view.release()
        self._buffer.clear()

    def prepend(self, header: bytes) -> None:
        """Put header fields in front of the held message (the scan's results, a few hundred
        bytes netpolicy writes itself: not taken from the budget)."""
        self._head = header + self._head

    def blocks(self) -> Iterator[bytes]:
        """The message in blocks of at most ``BLOCK`` bytes (callable from a worker thread);
        what was prepended comes first."""
        if self._head:
            yield self._head
        yield from self._held()

    def _held(self) -> Iterator[bytes]:
        """What was written, in blocks of at most ``BLOCK`` bytes."""
        if self._file is None:
            for start in range(0, len(self._buffer), BLOCK):
                yield bytes(self._buffer[start:start + BLOCK])
            return
        if self._buffer:
            self._flush()
        yield from _file_blocks(self._file)

    async def remove_header_fields(self, names: frozenset[str], unwanted: Callable[[HeaderField], bool]) -> Counter[str]:
        """Remove the header fields named one of ``names`` (in lower case) that ``unwanted``
        picks, from what was written (not what was prepended), and give their bytes back to
        the budget. Returns how many went by name, each name spelled as the first of its kind.

        Only the header section is read, in blocks; the fields to remove are taken as they are
        found, never listed whole. Nothing is copied unless a field goes: in memory the kept
        pieces make a new buffer; a spooled message gets a new nameless file holding the kept
        pieces, copied file to file by the kernel (``copy_file_range``), never through a
        ``bytes`` of the whole message.

        A message in memory is done in the event loop: 27 us for a typical 7.5 KB message,
        75 ms at worst (256 KiB of one-line forged fields, each read in Python). A spooled
        message's header section can be as large as the message: 10 MB of such fields took
        2.3 s, so that is done in a worker thread on a descriptor of its own while the loop
        serves the other sessions. The budget is settled back in the loop (``ByteBudget`` is
        not thread-safe); when the session is cancelled meanwhile (its client left), the
        thread's new file is closed once the thread ends.
        """
        removal = _Removal(names, unwanted)
        if self._file is None:
            kept = removal.kept(self._held(), self.size)
            if kept is not None:
                self._buffer = bytearray().join(self._buffer[start:end] for start, end in kept)
        else:
            if self._buffer:
                self._flush()
            work = asyncio.get_running_loop().run_in_executor(
                None, _rewrite, os.dup(self._file), self.size, self.directory, removal)
            try:
                target = await asyncio.shield(work)
            except asyncio.CancelledError:
                work.add_done_callback(_close_result)
                raise
            if target is not None:
                os.close(self._file)
                self._file = target
        self.size -= removal.freed
        self.budget.give(removal.freed)
        return removal.removed

    def discard(self) -> None:
        """Drop everything held and give the bytes back; the spool can be written again."""
        self.budget.give(self.size)
        self.size = 0
        self._buffer = bytearray()
        self._head = b""
        if self._file is not None:
            os.close(self._file)
            self._file = None


class _Removal:
    """The fields to remove, as ranges of the message taken as they are found, and their tally."""

    def __init__(self, names: frozenset[str], unwanted: Callable[[HeaderField], bool]) -> None:
        self.names = names
        self.unwanted = unwanted
        self.removed: Counter[str] = Counter()
        self.freed = 0
        self._spelling: dict[str, str] = {}

    def kept(self, blocks: Iterable[bytes], size: int) -> Iterator[tuple[int, int]] | None:
        """The ranges of the ``size`` bytes read as ``blocks`` to keep, found as they are used;
        None when no field goes (nothing to copy)."""
        gone = self._ranges(blocks)
        first = next(gone, None)
        return None if first is None else _complement(itertools.chain((first,), gone), size)

    def _ranges(self, blocks: Iterable[bytes]) -> Iterator[tuple[int, int]]:
        for f in header_fields(blocks, self.names):
            if self.unwanted(f):
                self.removed[self._spelling.setdefault(f.name.lower(), f.name)] += 1
                self.freed += f.end - f.start
                yield f.start, f.end


def _rewrite(source: int, size: int, directory: str | None, removal: _Removal) -> int | None:
    """The descriptor of a new spool file holding the ``size`` bytes of ``source`` but the
    fields ``removal`` takes out, or None when none is; closes ``source`` (a worker thread's)."""
    try:
        kept = removal.kept(_file_blocks(source), size)
        if kept is None:
            return None
        target = _new_file(directory)
        try:
            written = 0
            for start, end in kept:
                offset = start
                while offset < end:
                    n = os.copy_file_range(source, target, end - offset, offset, written)
                    if n == 0:
                        raise OSError(errno.EIO, "spool file shorter than what was written to it")
                    offset += n
                    written += n
        except BaseException:
            os.close(target)
            raise
        return target
    finally:
        os.close(source)


def _close_result(work: asyncio.Future[int | None]) -> None:
    """Close the file ``_rewrite`` made for a session that did not wait for it."""
    if not work.cancelled() and work.exception() is None and (target := work.result()) is not None:
        os.close(target)


def _new_file(directory: str | None) -> int:
    """A nameless file (``O_TMPFILE``) in ``directory``: a killed process leaves nothing behind."""
    with tempfile.TemporaryFile(dir=directory) as f:
        return os.dup(f.fileno())


def _file_blocks(fd: int) -> Iterator[bytes]:
    offset = 0
    while True:
        block = os.pread(fd, BLOCK, offset)
        if not block:
            return
        offset += len(block)
        yield block


def _complement(removed: Iterable[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    """The ranges of ``[0, size)`` between the ``removed`` ones (in order, not overlapping);
    empty ones are left out."""
    cursor = 0
    for start, end in removed:
        if start > cursor:
            yield cursor, start
        cursor = end
    if size > cursor:
        yield cursor, size
