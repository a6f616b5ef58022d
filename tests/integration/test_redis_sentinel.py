"""The state store behind Redis Sentinel (``redis+sentinel://``): a real master, its replica and a
sentinel (redis-server --sentinel), and a failover while the counters are in use.

The store must find the master through the sentinel, count there, and after the master dies and
the sentinel promotes the replica, share again on the new master, with what was replicated
before the failover (an hourly window) still counted; meanwhile every call is answered from the
process, as for any outage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from netpolicy.model.policy import State
from netpolicy.smtp.redis_counters import UNREACHABLE, RedisStore
from tests.support.redis import SentinelSetup, running_sentinel
from tests.support.wait import wait_until_async

ADDRESS = "192.0.2.9"


@pytest.fixture
def sentinel() -> Iterator[SentinelSetup]:
    with running_sentinel() as setup:
        yield setup


async def test_counters_follow_the_master_through_a_failover(sentinel: SentinelSetup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "netpolicy.smtp.state")
    store = RedisStore(retry=0.1, retry_max=0.5)
    await store.configure(State(redis=sentinel.url, prefix="np:"))
    try:
        assert store.up
        view = store.counters("IncomingMail")
        assert await view.take("rcpts", ADDRESS, 2)
        assert await view.take("rcpts", ADDRESS, 2)
        assert not await view.take("rcpts", ADDRESS, 2)
        master = Redis(host=sentinel.master.address, port=sentinel.master.port)
        try:
            assert await master.exists(f"np:win:IncomingMail:rcpts:3600:{ADDRESS}") == 1  # counted on the master
            assert await master.execute_command("WAIT", 1, 2000) == 1  # and the replica has it
        finally:
            await master.aclose()
        assert await view.open_connection(ADDRESS, 5)

        sentinel.master.kill()
        assert await view.take("rcpts", "192.0.2.10", 1)  # answered while the master is gone (per process)
        await wait_until_async(lambda: sentinel.replica.address in sentinel.ask("SENTINEL", "get-master-addr-by-name", sentinel.service),
                               "the sentinel to promote the replica", timeout=20)
        await wait_until_async(lambda: store.up, "the store to find the new master", timeout=10)
        assert not await view.take("rcpts", ADDRESS, 2)  # the window replicated before the failover still counts
        new = Redis(host=sentinel.replica.address, port=sentinel.replica.port)
        try:
            assert await new.zcard(f"np:conn:IncomingMail:{ADDRESS}") == 1  # the open connection's lease, re-added
        finally:
            await new.aclose()
        messages = [r.getMessage() for r in caplog.records if r.name == "netpolicy.smtp.state"]
        assert sum(UNREACHABLE in m for m in messages) == 1, messages
        assert any("reachable again" in m for m in messages), messages
    finally:
        await store.close()


async def test_a_sentinel_that_does_not_know_the_service_leaves_the_limits_per_process(
        sentinel: SentinelSetup, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore()
    await store.configure(State(redis=sentinel.url.replace(sentinel.service, "nosuchmaster")))
    try:
        assert store.up is False
        assert "no sentinel gave the master 'nosuchmaster'" in caplog.text
        view = store.counters("IncomingMail")
        assert await view.take("rcpts", ADDRESS, 1)
        assert not await view.take("rcpts", ADDRESS, 1)  # per process
    finally:
        await store.close()


async def test_the_sentinels_are_asked_in_turn(sentinel: SentinelSetup) -> None:
    """A first sentinel that refuses the connection does not stop the second from being asked."""
    store = RedisStore(timeout=0.5)
    await store.configure(State(redis=f"redis+sentinel://127.0.0.1:1,{sentinel.address}:{sentinel.port}/{sentinel.service}/0"))
    try:
        assert store.up
    finally:
        await store.close()
