"""Dynamic promotion: hosts that keep offending are pushed into the kernel for a while.

An offence is a REJECT, a DHAP hit or a rate-limit hit. When a host collects ``promote_after``
offences within an hour (its policy's parameter), serve adds it to the listener's kernel set
with a timeout of ``promote_for`` seconds, so its next connections are refused at SYN and cost
the SMTP process nothing. Counting lives here, the kernel side in the backend.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 3600.0


@dataclass(frozen=True)
class PromotionDecision:
    """A host that reached its threshold: serve is to hold it in the kernel for ``seconds``.
    (What the kernel then holds, with the time left, is ``values.Promotion``.)"""

    listener: str
    address: str
    seconds: int
    offences: int


class OffenceTracker:
    """Offences per (listener, address) in a sliding hour; bounded so a scan cannot exhaust memory."""

    def __init__(self, max_hosts: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._max_hosts = max_hosts
        self._clock = clock

    def record(self, listener: str, address: str, promote_after: int | None, promote_for: int) -> PromotionDecision | None:
        """Count one offence; return a decision to promote when the host reaches its threshold."""
        if promote_after is None:
            return None
        now = self._clock()
        key = (listener, address)
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        hits.append(now)
        self._hits[key] = hits
        while len(self._hits) > self._max_hosts:
            self._hits.popitem(last=False)
        if len(hits) >= promote_after:
            del self._hits[key]  # start afresh: the next promotion needs a new run of offences
            return PromotionDecision(listener, address, promote_for, len(hits))
        return None
