"""Refusals shared through a real redis-server into a real kernel (nftables, in a namespace).

Gateway A only publishes (its own RedisStore); gateway B follows the store into a Reconciler over
the server namespace's kernel. Promotions are applied whatever generation B runs; learned
refusals only under B's generation. A gateway that starts later loads the promotions still
running, for their time left. With the store down, A keeps what it could not publish and
publishes it, for the time left, once the store is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from netpolicy.kernel.base import Backend
from netpolicy.kernel.learning import Learning
from netpolicy.kernel.reconciler import Reconciler
from netpolicy.kernel.values import LearnedRefusal, Promotion
from netpolicy.model.plan import KernelPlan
from netpolicy.model.policy import State
from netpolicy.daemon.shared_refusals import SharedRefusals
from netpolicy.smtp.redis_counters import RedisStore
from tests.support.kernel import LISTENER, backend_in, make_plan
from tests.support.netns import Netns, NetPair
from tests.support.redis import RedisServer, running_redis
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.netns

UNDER_MINE, UNDER_OTHER, PROMOTED, LATE, DURING_OUTAGE = "192.0.2.51", "192.0.2.52", "192.0.2.53", "192.0.2.54", "192.0.2.55"


@dataclass
class InNamespace:
    """The reconciler, every call made inside the server namespace (its kernel, not the host's)."""

    ns: Netns
    reconciler: Reconciler

    @property
    def plan(self) -> KernelPlan:
        return self.reconciler.plan

    def promote(self, listener: str, address: str, seconds: float) -> None:
        self.ns.call(lambda: self.reconciler.promote(listener, address, seconds))

    def learn(self, batch: list[Learning]) -> list[Learning]:
        return self.ns.call(lambda: self.reconciler.learn(batch))


@dataclass
class Fleet:
    store: RedisServer
    backend: Backend
    ns: Netns
    a: SharedRefusals
    b: SharedRefusals
    reconciler: InNamespace

    async def follow(self) -> None:
        await self.b.store.configure(self.state)
        await self.b.configure(self.state, self.reconciler)  # type: ignore[arg-type]

    @property
    def state(self) -> State:
        return State(redis=self.store.url, prefix="np:")

    async def promoted(self) -> dict[str, Promotion]:
        found = await asyncio.to_thread(self.ns.call, self.backend.promoted)
        return {p.address: p for p in found}

    async def learned(self) -> dict[str, LearnedRefusal]:
        found = await asyncio.to_thread(self.ns.call, self.backend.learned)
        return {r.address: r for r in found}


@pytest.fixture
async def fleet(netpair: NetPair) -> AsyncIterator[Fleet]:
    backend = backend_in(netpair.server, "nftables")
    plan = make_plan(netpair.server_v4, generation="g1")
    reconciler = Reconciler(backend, plan)
    netpair.server.call(reconciler.check_once)
    with running_redis() as store:
        made = Fleet(store, backend, netpair.server, SharedRefusals(RedisStore(), "gateway-a"),
                     SharedRefusals(RedisStore(), "gateway-b"), InNamespace(netpair.server, reconciler))
        await made.a.store.configure(made.state)
        try:
            yield made
        finally:
            for shared in (made.a, made.b):
                await shared.close()
                await shared.store.close()


async def test_promotions_apply_on_any_generation_learned_refusals_on_the_same_one(fleet: Fleet) -> None:
    await fleet.follow()
    assert await fleet.a.publish("learned", LISTENER, UNDER_MINE, 30, "g1")
    assert await fleet.a.publish("learned", LISTENER, UNDER_OTHER, 30, "g0")
    assert await fleet.a.publish("promoted", LISTENER, PROMOTED, 30, "g0")
    assert await fleet.a.publish("promoted", "NoSuchListener", PROMOTED, 30, "g1")
    await wait_until_async(lambda: fleet.b.applied == {"learned": 1, "promoted": 1}, "B to apply what it may")
    assert list(await fleet.learned()) == [UNDER_MINE]
    assert list(await fleet.promoted()) == [PROMOTED]
    assert fleet.a.published == {"learned": 2, "promoted": 2}


async def test_a_gateway_starting_later_loads_what_still_runs_for_the_time_left(fleet: Fleet) -> None:
    assert await fleet.a.publish("promoted", LISTENER, LATE, 30, "g1")
    await asyncio.sleep(2)
    await fleet.follow()
    await wait_until_async(lambda: fleet.b.applied == {"promoted": 1}, "B to load the running promotion")
    held = (await fleet.promoted())[LATE]
    assert 25 < held.expires_in <= 28.5, held


async def test_what_the_store_could_not_take_is_published_when_it_returns(fleet: Fleet) -> None:
    await fleet.follow()
    fleet.store.kill()
    await wait_until_async(lambda: fleet.a.store.up is False, "A to see the store down")
    assert not await fleet.a.publish("promoted", LISTENER, DURING_OUTAGE, 20, "g1")
    published_at = time.monotonic()
    await fleet.a.flush()  # still down: kept
    fleet.store.start()
    await wait_until_async(lambda: fleet.a.store.up is True, "A to reach the store again", timeout=10)
    await wait_until_async(lambda: fleet.b.store.up is True, "B to reach the store again", timeout=10)
    await fleet.a.flush()
    await wait_until_async(lambda: fleet.b.applied == {"promoted": 1}, "B to apply the promotion made during the outage",
                           timeout=10)
    held = (await fleet.promoted())[DURING_OUTAGE]
    assert held.expires_in <= 20 - (time.monotonic() - published_at) + 1, held
    assert fleet.a.published == {"promoted": 1}
