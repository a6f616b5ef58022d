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

import os
import tempfile
from collections.abc import Iterator

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
            with tempfile.TemporaryFile(dir=self.directory) as f:
                self._file = os.dup(f.fileno())
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
        if self._file is None:
            for start in range(0, len(self._buffer), BLOCK):
                yield bytes(self._buffer[start:start + BLOCK])
            return
        if self._buffer:
            self._flush()
        offset = 0
        while True:
            block = os.pread(self._file, BLOCK, offset)
            if not block:
                return
            offset += len(block)
            yield block

    def discard(self) -> None:
        """Drop everything held and give the bytes back; the spool can be written again."""
        self.budget.give(self.size)
        self.size = 0
        self._buffer = bytearray()
        self._head = b""
        if self._file is not None:
            os.close(self._file)
            self._file = None
