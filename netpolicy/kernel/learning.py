"""Learned refusals: a TCPREFUSE that rests on DNS answers is held in the kernel for their TTL.

A host refused in userland because a DNS list, its score or its host name says so costs a
handshake, the lookups' cache hits and a decision on every connection. When the decision is
TCPREFUSE and every DNS fact it used holds for at least a second (``Decision.dns_ttl``: the
shortest TTL; 0 when a lookup failed, None when it used none), serve puts the address into the
listener's timed kernel set ``learned`` for min(TTL, ``learn_refusals``) seconds, and its next
connections are refused at SYN. The same answers, still valid for that long, would decide
TCPREFUSE again, so the kernel never refuses more than userland would.

Why a set of their own rather than the ``promoted`` set with a marker: a reload that changes the
policy empties the learned entries and keeps the promotions, which is one flush of one set
(``apply`` empties it in the transaction that re-stamps the rules' generation, on nftables
atomically) instead of reading back and deleting marked elements one by one; ``status`` lists
them apart by set, on both backends (ipset has no per-element marker unless the set was
created with comments); and a flood of learned hosts cannot push a promotion out. The price
is one more rule (one more hash lookup for a SYN to the listener's port).

Bounds: at most ``MAX_LEARNED`` addresses per listener are held at once. Past it a refused host
is not learned, and is refused in userland as before (handshake, then RST) until learned entries
expire; such hosts are counted (``Learner.skipped``) and the first one per crossing is logged.
An address already held (or on its way to the kernel) is not learned again.

The work is split by thread. ``Learner`` lives on the event loop: it decides what to learn,
deduplicates and bounds without locks, and queues. Its ``run`` loop hands what queued to the
reconciler in one call per batch (one netlink transaction per listener and batch: under a
flood the batches grow while a commit is running, instead of one thread per host waiting for
the backend's lock). The reconciler, in its thread, checks each batch against the plan in force
(a batch decided under a policy that has since been replaced is dropped) and remembers what it
learned, to put it back after drift.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from netpolicy.model.hat import Decision
from netpolicy.model.policy import Listener

log = logging.getLogger("netpolicy.learning")

MAX_LEARNED = 65536  # addresses held at once per listener (both families)
MIN_SECONDS = 1  # the kernel's timeouts count whole seconds on ipset

Key = tuple[str, str]  # (listener name, address)


def learn_seconds(decision: Decision, listener: Listener, learn_refusals: int) -> int | None:
    """Seconds the kernel may refuse ``decision.address`` on ``listener``, or None.

    Only a TCPREFUSE whose DNS facts all hold for at least ``MIN_SECONDS`` on a kernel-enforced
    listener: a decision by address alone is the compiler's business (it is in the plan, or the
    compiler has said why not), and a failed lookup (TTL 0) must not be held as an answer.
    Rounded down, so the kernel never holds it past the shortest TTL."""
    ttl = decision.dns_ttl
    if decision.behavior != "tcprefuse" or ttl is None or not listener.kernel or learn_refusals <= 0:
        return None
    seconds = int(min(ttl, learn_refusals))
    return seconds if seconds >= MIN_SECONDS else None


@dataclass(frozen=True)
class Learning:
    """One address to learn: decided under policy ``generation``, held until ``deadline``
    (the learner's clock) for ``seconds``."""

    listener: str
    address: str
    seconds: int
    deadline: float
    generation: str


class Deadlines:
    """(listener, address) -> deadline (and a note), with expired keys dropped in deadline
    order and a count per listener. Not thread-safe: each owner keeps its own (the learner on
    the event loop, the reconciler under its lock)."""

    def __init__(self) -> None:
        self._at: dict[Key, float] = {}
        self._notes: dict[Key, tuple[str, str]] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._per: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._at)

    def __iter__(self) -> Iterator[tuple[Key, float]]:
        return iter(list(self._at.items()))

    def get(self, key: Key) -> float | None:
        return self._at.get(key)

    def note(self, key: Key) -> tuple[str, str] | None:
        return self._notes.get(key)

    def count(self, listener: str) -> int:
        return self._per[listener]

    def counts(self) -> dict[str, int]:
        return {name: n for name, n in self._per.items() if n}

    def put(self, key: Key, deadline: float, note: tuple[str, str] | None = None) -> None:
        if key not in self._at:
            self._per[key[0]] += 1
        self._at[key] = deadline
        if note is not None:
            self._notes[key] = note
        heapq.heappush(self._heap, (deadline, *key))
        if len(self._heap) > 2 * len(self._at) + 1024:  # replaced deadlines left behind
            self._heap = [(at, *k) for k, at in self._at.items()]
            heapq.heapify(self._heap)

    def discard(self, key: Key, deadline: float | None = None) -> None:
        """Forget ``key`` (only if its deadline is ``deadline``, when given)."""
        at = self._at.get(key)
        if at is not None and (deadline is None or at == deadline):
            del self._at[key]
            self._notes.pop(key, None)
            self._per[key[0]] -= 1

    def expire(self, now: float) -> None:
        """Drop every key whose deadline is ``now`` or earlier."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, listener, address = heapq.heappop(heap)
            self.discard((listener, address), at)

    def clear(self) -> None:
        self._at.clear()
        self._notes.clear()
        self._heap.clear()
        self._per.clear()


class LearningSink(Protocol):
    """Where batches go: ``Reconciler.learn`` (blocking; returns the items it took)."""

    def learn(self, batch: list[Learning]) -> list[Learning]: ...


class Learner:
    """The event-loop half (see the module docstring): ``offer`` never blocks."""

    def __init__(self, cap: int = MAX_LEARNED, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.learned: Counter[str] = Counter()  # addresses the kernel took, per listener
        self.skipped: Counter[str] = Counter()  # refused hosts not learned: the listener was full
        self._held = Deadlines()
        self._queue: list[Learning] = []
        self._wake = asyncio.Event()
        self._full: set[str] = set()
        self._clock = clock

    def offer(self, decision: Decision, seconds: int, generation: str) -> bool:
        """Queue ``decision``'s address for ``seconds`` unless it is held already or its
        listener is full."""
        listener, address = decision.listener, decision.address
        now = self._clock()
        self._held.expire(now)
        key = (listener, address)
        if self._held.get(key) is not None:
            return False
        if self._held.count(listener) >= self.cap:
            self.skipped[listener] += 1
            if listener not in self._full:
                self._full.add(listener)
                log.warning("listener %s holds %d learned refusals: refused hosts are no longer learned until some expire",
                            listener, self.cap)
            return False
        self._full.discard(listener)
        deadline = now + seconds
        self._held.put(key, deadline, (decision.sender_group, decision.match))
        self._queue.append(Learning(listener, address, seconds, deadline, generation))
        self._wake.set()
        return True

    def why(self, listener: str, address: str) -> tuple[str, str] | None:
        """(sender group, match) of the decision ``address`` is held for on ``listener``: what
        a kernel refusal of it logs (the address alone would decide otherwise)."""
        self._held.expire(self._clock())
        return self._held.note((listener, address))

    def held(self) -> dict[str, int]:
        """Addresses held per listener now (their deadlines not passed)."""
        self._held.expire(self._clock())
        return self._held.counts()

    def forget(self) -> None:
        """The policy changed: what was learned under the old one is gone from the kernel."""
        self._held.clear()
        self._queue.clear()
        self._full.clear()

    async def run(self, sink: LearningSink, executor: Executor | None = None) -> None:
        """Hand queued addresses to ``sink`` in batches, in ``executor``, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            taken: list[Learning] = []
            try:
                taken = await loop.run_in_executor(executor, sink.learn, batch)
            finally:
                self._settle(batch, taken)

    def _settle(self, batch: list[Learning], taken: list[Learning]) -> None:
        """Count what the kernel took; what it did not (decided under a policy no longer in
        force, or lost to an error) may be learned again."""
        kept = set(map(id, taken))
        for item in taken:
            self.learned[item.listener] += 1
        for item in batch:
            if id(item) not in kept:
                self._held.discard((item.listener, item.address), item.deadline)
