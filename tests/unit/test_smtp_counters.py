"""Per-address counters: concurrency slots and sliding hourly windows."""

from __future__ import annotations

from netpolicy.smtp.counters import HOUR, InMemoryCounters


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrency_slots_per_address() -> None:
    c = InMemoryCounters()
    assert await c.open_connection("192.0.2.1", 2)
    assert await c.open_connection("192.0.2.1", 2)
    assert not await c.open_connection("192.0.2.1", 2)
    assert await c.open_connection("192.0.2.2", 2)  # another address has its own slots
    assert await c.open_connection("192.0.2.1", None)  # no limit
    await c.close_connection("192.0.2.1")
    await c.close_connection("192.0.2.1")
    assert c.connections("192.0.2.1") == 1
    assert await c.open_connection("192.0.2.1", 2)


async def test_take_stops_at_the_limit_and_slides() -> None:
    clock = Clock()
    c = InMemoryCounters(clock=clock)
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


async def test_hit_counts_every_event() -> None:
    clock = Clock()
    c = InMemoryCounters(clock=clock)
    assert [await c.hit("dhap", "a") for _ in range(4)] == [1, 2, 3, 4]
    clock.now += HOUR + 60
    assert await c.count("dhap", "a") == 0
    assert await c.hit("dhap", "a") == 1


async def test_idle_windows_are_swept() -> None:
    clock = Clock()
    c = InMemoryCounters(clock=clock, sweep_every=60)
    for n in range(1000):
        await c.hit("dhap", f"198.51.100.{n % 250}-{n}")
    assert c.tracked() == 1000
    clock.now += HOUR + 120
    await c.hit("dhap", "192.0.2.1")
    assert c.tracked() == 1
