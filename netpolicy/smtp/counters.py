"""Per-client-address counters behind one small interface.

Limits that span connections (``max_concurrency``, ``max_rcpts_per_hour``, ``dhap_limit``)
need state shared by every session from one address. Today that state lives in this process
(``InMemoryCounters``); with SO_REUSEPORT workers or several gateways it must live in a shared
store, so the SMTP session talks only to the ``Counters`` protocol and its methods are async
(a network store needs to await).

Hourly windows are sliding windows kept as 60 buckets per key: memory per address is bounded
whatever the traffic, and an event leaves the window at most one bucket (a minute for an hour)
early. Idle keys are swept, so a scan from many addresses cannot grow the tables forever.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

HOUR = 3600.0
BUCKETS = 60


class Counters(Protocol):
    """What the SMTP listener needs to know about other sessions of the same client."""

    async def open_connection(self, address: str, limit: int | None) -> bool:
        """Count a new connection; False (and not counted) when ``limit`` are already open."""
        ...

    async def close_connection(self, address: str) -> None: ...

    async def take(self, kind: str, address: str, limit: int | None, window: float = HOUR) -> bool:
        """Record one event unless ``limit`` events are already in the window; True if recorded."""
        ...

    async def hit(self, kind: str, address: str, window: float = HOUR) -> int:
        """Record one event unconditionally; the number in the window, this one included."""
        ...

    async def count(self, kind: str, address: str, window: float = HOUR) -> int: ...


class _Window:
    """Event counts in ``BUCKETS`` time buckets covering one window."""

    __slots__ = ("buckets", "width")

    def __init__(self, window: float) -> None:
        self.width = window / BUCKETS
        self.buckets: deque[list[int]] = deque()  # [bucket number, events], oldest first

    def total(self, now: float) -> int:
        oldest = int(now / self.width) - BUCKETS + 1
        while self.buckets and self.buckets[0][0] < oldest:
            self.buckets.popleft()
        return sum(b[1] for b in self.buckets)

    def add(self, now: float) -> None:
        number = int(now / self.width)
        if self.buckets and self.buckets[-1][0] == number:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([number, 1])


class InMemoryCounters:
    """``Counters`` for one process. Nothing here awaits, so check-and-record is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sweep_every: float = 60.0) -> None:
        self._clock = clock
        self._open: dict[str, int] = {}
        self._windows: dict[tuple[str, str, float], _Window] = {}
        self._sweep_every = sweep_every
        self._last_sweep = clock()

    async def open_connection(self, address: str, limit: int | None) -> bool:
        current = self._open.get(address, 0)
        if limit is not None and current >= limit:
            return False
        self._open[address] = current + 1
        return True

    async def close_connection(self, address: str) -> None:
        current = self._open.get(address, 0) - 1
        if current > 0:
            self._open[address] = current
        else:
            self._open.pop(address, None)

    def connections(self, address: str) -> int:
        return self._open.get(address, 0)

    def _window(self, kind: str, address: str, window: float, now: float) -> _Window:
        if now - self._last_sweep >= self._sweep_every:
            self._sweep(now)
        key = (kind, address, window)
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = _Window(window)
        return found

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for key in [k for k, w in self._windows.items() if w.total(now) == 0]:
            del self._windows[key]

    async def take(self, kind: str, address: str, limit: int | None, window: float = HOUR) -> bool:
        now = self._clock()
        w = self._window(kind, address, window, now)
        if limit is not None and w.total(now) >= limit:
            return False
        w.add(now)
        return True

    async def hit(self, kind: str, address: str, window: float = HOUR) -> int:
        now = self._clock()
        w = self._window(kind, address, window, now)
        w.add(now)
        return w.total(now)

    async def count(self, kind: str, address: str, window: float = HOUR) -> int:
        now = self._clock()
        found = self._windows.get((kind, address, window))
        return 0 if found is None else found.total(now)

    def tracked(self) -> int:
        """How many (kind, address) windows are held: tests check the sweep bounds it."""
        return len(self._windows)
