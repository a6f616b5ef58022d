"""tests/support/wait.py: returns as soon as the condition holds, and a failure names what never came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.wait import wait_until, wait_until_async


def test_returns_the_first_true_value() -> None:
    answers = iter([None, "", "ready"])
    assert wait_until(lambda: next(answers), "the third answer", step=0) == "ready"


def test_a_timeout_names_what_was_awaited() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waited 0\.05 s for the banner"):
        wait_until(lambda: False, "the banner", timeout=0.05)
    assert time.monotonic() - started < 1.0


def test_ignored_errors_mean_not_yet_and_the_last_one_is_reported() -> None:
    tries: Iterator[OSError | bool] = iter([ConnectionRefusedError("no listener"), ConnectionRefusedError("no listener"), True])

    def connect() -> bool:
        answer = next(tries)
        if isinstance(answer, OSError):
            raise answer
        return answer

    assert wait_until(connect, "a listener", step=0, ignoring=(OSError,)) is True

    def refused() -> bool:
        raise ConnectionRefusedError("still nothing")

    with pytest.raises(AssertionError, match="the last try raised ConnectionRefusedError"):
        wait_until(refused, "a listener", timeout=0.05, ignoring=(OSError,))


def test_other_errors_end_the_wait_at_once() -> None:
    def exited() -> bool:
        raise RuntimeError("the daemon exited 1")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        wait_until(exited, "READY=1", timeout=30, ignoring=(OSError,))
    assert time.monotonic() - started < 1.0


async def test_the_async_twin_lets_the_event_loop_run_between_polls() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    assert await wait_until_async(done.is_set, "the timer", timeout=2) is True
    with pytest.raises(AssertionError, match=r"waited 0\.05 s for a counter"):
        await wait_until_async(lambda: 0, "a counter", timeout=0.05)
