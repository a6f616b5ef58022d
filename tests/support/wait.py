"""The one way tests and benches wait: poll a condition until it holds, or fail naming what was awaited.

A fixed sleep is either too short on a loaded machine (two cores shared by several test runs make
it flaky) or wasted time everywhere else; a poll returns as soon as the thing happened, and when
it does not happen the failure says what never came instead of failing an assertion further on.

The condition is the thing itself: READY=1 or a log line in the daemon's output, a socket that
accepts, a counter, a segment in a capture. ``wait_until`` is for plain code and threads,
``wait_until_async`` for coroutines (it yields to the event loop between polls, so the code under
test running on the same loop goes on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Seconds between polls: long next to one check of a log or counter, short next to any timeout.
STEP = 0.02


def wait_until(
    predicate: Callable[[], T],
    what: str,
    *,
    timeout: float = 5.0,
    step: float = STEP,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something true, and return that.

    Exceptions of the ``ignoring`` types count as "not yet" (a connect refused while a server
    starts); any other exception ends the wait at once (a server that exited will never listen).
    """
    deadline = time.monotonic() + timeout
    while True:
        value, last = _poll(predicate, ignoring)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout, last))
        time.sleep(step)


async def wait_until_async(
    predicate: Callable[[], T],
    what: str,
    *,
    timeout: float = 5.0,
    step: float = STEP,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``wait_until`` for a coroutine: the event loop runs between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value, last = _poll(predicate, ignoring)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout, last))
        await asyncio.sleep(step)


def _poll(predicate: Callable[[], T], ignoring: tuple[type[BaseException], ...]) -> tuple[T | None, BaseException | None]:
    try:
        return predicate(), None
    except ignoring as exc:
        return None, exc


def _failure(what: str, timeout: float, last: BaseException | None) -> str:
    message = f"waited {timeout:g} s for {what}"
    return f"{message}; the last try raised {last!r}" if last is not None else message
