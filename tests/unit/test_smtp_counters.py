"""Per-address counters: concurrency slots and sliding hourly windows.

The behaviour tests run against both implementations: ``InMemoryCounters``, and ``RedisCounters``
on a real redis-server with the store's clock replaced by the test's (as the in-memory one's is).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from netpolicy.model.policy import State
from netpolicy.smtp.counters import HOUR, Counters, InMemoryCounters
from netpolicy.smtp.redis_counters import RedisStore
from tests.support.redis import running_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeCounters = Callable[[Clock], Awaitable[Counters]]


@pytest.fixture(params=["memory", "redis"])
async def make_counters(request: pytest.FixtureRequest) -> AsyncIterator[MakeCounters]:
    """Counters on ``clock``, of the implementation the test is parametrised with."""
    if request.param == "memory":
        async def in_memory(clock: Clock) -> Counters:
            return InMemoryCounters(clock=clock)

        yield in_memory
        return
    stores: list[RedisStore] = []
    with running_redis() as server:
        async def on_redis(clock: Clock) -> Counters:
            store = RedisStore(clock=clock)
            stores.append(store)
            await store.configure(State(redis=server.url, prefix="test:"))
            assert store.up
            return store.counters("IncomingMail")

        try:
            yield on_redis
        finally:
            for store in stores:
                await store.close()


async def test_concurrency_slots_per_address(make_counters: MakeCounters) -> None:
    c = await make_counters(Clock())
    assert await c.open_connection("192.0.2.1", 2)
    assert await c.open_connection("192.0.2.1", 2)
    assert not await c.open_connection("192.0.2.1", 2)
    assert await c.open_connection("192.0.2.2", 2)  # another address has its own slots
    assert await c.open_connection("192.0.2.1", None)  # no limit, but counted
    await c.close_connection("192.0.2.1")
    assert not await c.open_connection("192.0.2.1", 2)  # still two open
    await c.close_connection("192.0.2.1")
    assert await c.open_connection("192.0.2.1", 2)
    assert not await c.open_connection("192.0.2.1", 2)


async def test_take_stops_at_the_limit_and_slides(make_counters: MakeCounters) -> None:
    clock = Clock()
    c = await make_counters(clock)
    for _ in range(3):
        assert await c.take("rcpts", "a", 3)
        clock.now += 600  # ten minutes apart
    assert not await c.take("rcpts", "a", 3)
    assert await c.count("rcpts", "a") == 3
    clock.now += HOUR - 1800 + 61  # the first event has left the window, the others have not
    assert await c.take("rcpts", "a", 3)
    assert not await c.take("rcpts", "a", 3)
    assert await c.take("rcpts", "b", 3)  # per address
    assert await c.take("rcpts", "a", None)  # no limit


async def test_hit_counts_every_event(make_counters: MakeCounters) -> None:
    clock = Clock()
    c = await make_counters(clock)
    assert [await c.hit("dhap", "a") for _ in range(4)] == [1, 2, 3, 4]
    assert await c.count("dhap", "b") == 0
    clock.now += HOUR + 60
    assert await c.count("dhap", "a") == 0
    assert await c.hit("dhap", "a") == 1


async def test_events_leave_the_window_one_bucket_at_a_time(make_counters: MakeCounters) -> None:
    clock = Clock()
    start = clock.now
    c = await make_counters(clock)
    for minutes in (0, 10, 20, 30):
        clock.now = start + minutes * 60
        await c.hit("dhap", "a")
    counts = []
    for minutes in (59, 61, 71, 81, 91):
        clock.now = start + minutes * 60
        counts.append(await c.count("dhap", "a"))
    assert counts == [4, 3, 2, 1, 0]


async def test_kinds_and_windows_are_apart(make_counters: MakeCounters) -> None:
    c = await make_counters(Clock())
    assert await c.take("rcpts", "a", 1)
    assert await c.take("dhap", "a", 1)
    assert await c.take("rcpts", "a", 1, window=60.0)
    assert not await c.take("rcpts", "a", 1)


async def test_idle_windows_are_swept() -> None:
    clock = Clock()
    c = InMemoryCounters(clock=clock, sweep_every=60)
    for n in range(1000):
        await c.hit("dhap", f"198.51.100.{n % 250}-{n}")
    assert c.tracked() == 1000
    clock.now += HOUR + 120
    await c.hit("dhap", "192.0.2.1")
    assert c.tracked() == 1
