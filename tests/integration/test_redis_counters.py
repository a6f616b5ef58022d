"""Shared counters on a real redis-server: two RedisStores in one test play two gateways.

Each store has its own client and its own connection pool to the server, like two serve
processes; the limits must hold across both, leases of a store that dies must run out, and the
store's faults (down at start, killed mid-run and restarted empty, frozen) must leave every call
answered from the process's own counters, with one log line per outage and the gauge at 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvloop
from prometheus_client import generate_latest
from redis.asyncio import Redis

from netpolicy.daemon.metrics import DaemonView, Metrics
from netpolicy.model.policy import State
from netpolicy.smtp.listener import SmtpListener
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.redis_counters import UNREACHABLE, RedisCounters, RedisStore
from tests.support.redis import RedisServer, running_redis
from tests.support.smtp import FakeResolver, RawClient, build, policy_dict
from tests.support.wait import wait_until_async

ADDRESS = "192.0.2.7"
LOG = "netpolicy.smtp.state"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


Gateways = Callable[..., Any]


@pytest.fixture
async def gateways() -> AsyncIterator[Gateways]:
    """``await gateways(url, n, **store_options)``: n stores (gateways) on ``url``, closed after."""
    stores: list[RedisStore] = []

    async def make(url: str, n: int = 2, **options: Any) -> list[RedisCounters]:
        views = []
        for _ in range(n):
            store = RedisStore(**options)
            stores.append(store)
            await store.configure(State(redis=url, prefix="np:"))
            views.append(store.counters("IncomingMail"))
        return views

    try:
        yield make
    finally:
        for store in stores:
            await store.close()


def _unreachable(caplog: pytest.LogCaptureFixture) -> int:
    return sum(UNREACHABLE in r.getMessage() for r in caplog.records if r.name == LOG)


async def test_an_hourly_limit_holds_across_gateways(redis_server: RedisServer, gateways: Gateways) -> None:
    a, b = await gateways(redis_server.url)
    takes = await asyncio.gather(*(gw.take("rcpts", ADDRESS, 10) for _ in range(15) for gw in (a, b)))
    assert sum(takes) == 10
    assert await a.count("rcpts", ADDRESS) == await b.count("rcpts", ADDRESS) == 10


async def test_concurrency_holds_across_gateways(redis_server: RedisServer, gateways: Gateways) -> None:
    a, b = await gateways(redis_server.url)
    opened = await asyncio.gather(*(gw.open_connection(ADDRESS, 3) for _ in range(5) for gw in (a, b)))
    assert sum(opened) == 3
    holder = a if a.open.get(ADDRESS) else b
    other = b if holder is a else a
    await holder.close_connection(ADDRESS)
    assert await other.open_connection(ADDRESS, 3)
    assert not await holder.open_connection(ADDRESS, 3)


async def test_every_key_expires(redis_server: RedisServer, gateways: Gateways) -> None:
    """The store cannot grow without bound: windows live one window, connections one lease."""
    (a,) = await gateways(redis_server.url, 1, lease=30.0)
    await a.take("rcpts", ADDRESS, 10)
    await a.hit("dhap", ADDRESS, window=600.0)
    await a.open_connection(ADDRESS, None)
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        ttls = {key: await client.pttl(key) for key in await client.keys("np:*")}
    assert ttls.keys() == {f"np:win:IncomingMail:rcpts:3600:{ADDRESS}", f"np:win:IncomingMail:dhap:600:{ADDRESS}",
                           f"np:conn:IncomingMail:{ADDRESS}"}
    assert 3_590_000 < ttls[f"np:win:IncomingMail:rcpts:3600:{ADDRESS}"] <= 3_600_000
    assert 590_000 < ttls[f"np:win:IncomingMail:dhap:600:{ADDRESS}"] <= 600_000
    assert 29_000 < ttls[f"np:conn:IncomingMail:{ADDRESS}"] <= 30_000


async def test_a_dead_gateways_connections_stop_counting(redis_server: RedisServer, gateways: Gateways) -> None:
    """A lost gateway stops renewing: its connections stop counting one lease later, while a
    live gateway's connections, renewed, keep counting however long they stay open."""
    lease = 0.6
    a, b, c = await gateways(redis_server.url, 3, lease=lease)
    assert await a.open_connection(ADDRESS, 2)
    assert await b.open_connection(ADDRESS, 2)
    await a.store.close()  # gateway A dies with its connection open: nothing closes it
    assert not await c.open_connection(ADDRESS, 2)
    started = time.monotonic()
    while not await c.open_connection(ADDRESS, 2):
        assert time.monotonic() - started < 5 * lease, "A's lease never ran out"
        await asyncio.sleep(0.05)
    healed = time.monotonic() - started
    assert healed <= lease + 0.3, healed
    await asyncio.sleep(3 * lease)  # the behaviour under test: B's connection outlives its lease
    assert not await c.open_connection(ADDRESS, 2), "B's open connection lost its renewed lease"


async def test_unreachable_at_start(caplog: pytest.LogCaptureFixture, gateways: Gateways) -> None:
    caplog.set_level(logging.INFO, LOG)
    with running_redis() as server:
        server.kill()
        started = time.monotonic()
        (a,) = await gateways(server.url, 1, retry=0.05, retry_max=0.2)
        assert time.monotonic() - started < 1.0
        assert a.store.up is False
        assert [await a.take("rcpts", ADDRESS, 2) for _ in range(3)] == [True, True, False]  # per process
        assert await a.open_connection(ADDRESS, 1)
        assert not await a.open_connection(ADDRESS, 1)
        await asyncio.sleep(0.5)  # several reconnect attempts fail meanwhile
        assert _unreachable(caplog) == 1
        server.start()
        await wait_until_async(lambda: a.store.up, "the store to be used once it answers")
        (b,) = await gateways(server.url, 1)
        assert not await b.open_connection(ADDRESS, 1), "A's connection, opened without the store, is in it now"
        await a.close_connection(ADDRESS)
        assert await b.open_connection(ADDRESS, 1)


async def test_store_killed_mid_run_and_restarted_empty(redis_server: RedisServer, gateways: Gateways,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    a, b = await gateways(redis_server.url, 2, retry=0.05, retry_max=0.2)
    assert await a.open_connection(ADDRESS, 2)
    assert sum(await asyncio.gather(*(gw.take("rcpts", ADDRESS, 10) for _ in range(4) for gw in (a, b)))) == 8
    redis_server.kill()
    # per process meanwhile: each gateway goes on from what it recorded itself (4 of 10)
    assert sum([await a.take("rcpts", ADDRESS, 10) for _ in range(10)]) == 6
    assert sum([await b.take("rcpts", ADDRESS, 10) for _ in range(10)]) == 6
    assert a.store.up is False and b.store.up is False
    assert await a.open_connection(ADDRESS, 2)  # opened during the outage
    assert not await a.open_connection(ADDRESS, 2)
    assert await b.open_connection(ADDRESS, 2)
    assert _unreachable(caplog) == 2  # once per gateway, however many calls failed
    redis_server.start()
    await wait_until_async(lambda: a.store.up and b.store.up, "both gateways back on the store")
    # restarted empty: the windows start again, the open connections are all leased again
    assert sum(await asyncio.gather(*(gw.take("rcpts", ADDRESS, 10) for _ in range(15) for gw in (a, b)))) == 10
    (c,) = await gateways(redis_server.url, 1)
    assert not await c.open_connection(ADDRESS, 3)
    await a.close_connection(ADDRESS)  # opened during the outage: its close removes its lease
    assert await c.open_connection(ADDRESS, 3)
    assert _unreachable(caplog) == 2


async def test_a_store_that_answers_but_refuses_the_work_is_one_outage(gateways: Gateways,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Out of memory: PING and SCRIPT LOAD succeed, every write fails. Mail flows per process,
    the store is tried again with growing waits, and the outage is logged once."""
    caplog.set_level(logging.INFO, LOG)
    with running_redis(options=("--maxmemory", "1", "--maxmemory-policy", "noeviction")) as server:
        (a,) = await gateways(server.url, 1, retry=0.02, retry_max=0.5)
        started = time.monotonic()
        taken = 0
        while time.monotonic() - started < 1.5:
            taken += await a.take("rcpts", ADDRESS, 1000)
            await asyncio.sleep(0.01)
        assert taken > 50  # every one answered, per process
        assert _unreachable(caplog) == 1
        assert "OOM" in caplog.text
        reachable = [r.getMessage() for r in caplog.records if "limits are shared" in r.getMessage()]
        assert reachable[1:] == ["state store reachable again: limits are shared"], reachable  # not one per retry


async def test_a_frozen_store_costs_one_timeout(redis_server: RedisServer, gateways: Gateways) -> None:
    (a,) = await gateways(redis_server.url, 1, retry=0.05, retry_max=0.2)
    redis_server.freeze()
    try:
        started = time.monotonic()
        assert await a.take("rcpts", ADDRESS, 10)
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(100):
            await a.take("rcpts", ADDRESS, 1000)
        rest = time.monotonic() - started
    finally:
        redis_server.thaw()
    assert 0.2 <= first <= 0.6, first  # the socket timeout (0.25 s), then per process
    assert rest < 0.1, rest
    await wait_until_async(lambda: a.store.up, "the store used again once it answers")
    (b,) = await gateways(redis_server.url, 1)
    assert await b.take("rcpts", ADDRESS, 1000)
    # shared again; the first take may have run in the store too once it woke (it was sent)
    assert await a.count("rcpts", ADDRESS) in (1, 2)


async def test_the_gauge_follows_the_store(redis_server: RedisServer, gateways: Gateways) -> None:
    (a,) = await gateways(redis_server.url, 1, retry=0.05, retry_max=0.2)
    view = DaemonView(state_store_up=lambda: a.store.up)
    metrics = Metrics(view)

    def gauge() -> str:
        return [line for line in generate_latest(metrics.registry).decode().splitlines()
                if line.startswith("netpolicy_state_store_up ")][0]

    assert gauge() == "netpolicy_state_store_up 1.0"
    redis_server.kill()  # no call needed: the store's connection closing is enough
    await wait_until_async(lambda: gauge() == "netpolicy_state_store_up 0.0", "the gauge at 0")
    redis_server.start()
    await wait_until_async(lambda: a.store.up, "the store back")
    assert gauge() == "netpolicy_state_store_up 1.0"
    no_store = Metrics(DaemonView())
    assert b"netpolicy_state_store_up" not in generate_latest(no_store.registry)


async def test_a_reload_that_changes_the_store_moves_the_leases(gateways: Gateways) -> None:
    with running_redis() as first, running_redis() as second:
        (a,) = await gateways(first.url, 1)
        assert await a.open_connection(ADDRESS, 1)
        await a.store.configure(State(redis=second.url, prefix="np:"))
        assert a.store.up
        (b,) = await gateways(second.url, 1)
        assert not await b.open_connection(ADDRESS, 1), "A's open connection is counted in the new store"
        await a.store.configure(None)
        assert a.store.up is None
        assert await a.take("rcpts", ADDRESS, 1)
        assert not await a.take("rcpts", ADDRESS, 1)


def test_on_uvloop(redis_server: RedisServer) -> None:
    """serve runs on uvloop, whose transports are not asyncio's classes."""

    async def shared() -> bool | None:
        store = RedisStore()
        await store.configure(State(redis=redis_server.url))
        try:
            assert await store.counters("IncomingMail").take("rcpts", ADDRESS, 1)
            assert not await store.counters("IncomingMail").take("rcpts", ADDRESS, 1)
            return store.up
        finally:
            await store.close()

    assert uvloop.run(shared())


async def test_password_and_database_from_the_url(gateways: Gateways, caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(options=("--requirepass", "s3cr:t")) as server:
        base = f"redis://:s3cr%3At@{server.address}:{server.port}"
        (a,) = await gateways(f"{base}/2", 1)
        assert a.store.up
        assert await a.take("rcpts", ADDRESS, 10)
        async with Redis.from_url(f"{base}/2", decode_responses=True) as client:
            assert await client.keys("np:*") == [f"np:win:IncomingMail:rcpts:3600:{ADDRESS}"]
        (b,) = await gateways(f"redis://:wrong@{server.address}:{server.port}/2", 1)
        assert b.store.up is False
        assert "WRONGPASS" in caplog.text


async def test_unix_socket(gateways: Gateways, tmp_path: Any) -> None:
    path = tmp_path / "store.sock"
    with running_redis(options=("--unixsocket", str(path), "--unixsocketperm", "700")):
        a, b = await gateways(f"unix://{path}?db=3", 2)
        assert a.store.up and b.store.up
        assert await a.take("rcpts", ADDRESS, 1)
        assert not await b.take("rcpts", ADDRESS, 1)


async def test_tls(gateways: Gateways, caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(tls=True) as server:
        (a,) = await gateways(server.url, 1)
        assert a.store.up
        assert await a.take("rcpts", ADDRESS, 1)
        assert not await a.take("rcpts", ADDRESS, 1)
        (untrusted,) = await gateways(server.url.partition("?")[0], 1)  # the system's CAs did not sign it
        assert untrusted.store.up is False
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


# -- whole SMTP sessions: two listeners (gateways) on loopback, each on its own store client ----


def _listening(address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(64)
    return sock


async def test_thirty_recipients_over_two_gateways_get_ten_accepted(redis_server: RedisServer, gateways: Gateways,
                                                                    tmp_path: Any) -> None:
    data = policy_dict("127.0.0.1", str(tmp_path / "maildir"))
    data["mail_flow_policies"]["ACCEPTED"] = {"behavior": "accept", "max_rcpts_per_hour": 10}
    policy, hat = build(data)
    views = await gateways(redis_server.url, 2)
    listeners, addresses = [], []
    for n, counters in enumerate(views):
        sock = _listening(f"127.0.0.{n + 1}")
        addresses.append(sock.getsockname()[:2])
        listener = SmtpListener(policy.listener("Inbound"), hat, FakeResolver(), MailLog(str(tmp_path / f"mail{n}.log")),
                                counters=counters)
        await listener.start(sock=sock)
        listeners.append(listener)
    try:
        codes: list[int] = []
        for n in range(6):  # 6 connections, alternating gateways, 5 recipients each
            reader, writer = await asyncio.open_connection(*addresses[n % 2])
            client = RawClient(reader, writer)
            assert (await client.answer()).code == 220
            await client.envelope("a@sender.test")
            codes += [(await client.cmd(f"RCPT TO:<u{n}.{i}@example.test>")).code for i in range(5)]
            await client.cmd("QUIT")
            await client.close()
    finally:
        for listener in listeners:
            await listener.stop(grace=0.1)
    assert codes.count(250) == 10, codes
    assert len(codes) == 30
