"""The reconciler's logic against an in-memory kernel: applies, cheap checks, periodic full
checks, counted and logged repairs, plan reloads, promotions restored after drift and renewed
before they lapse, learned refusals restored after drift and forgotten with their policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from netpolicy.kernel.base import Backend
from netpolicy.kernel.layout import listener_id
from netpolicy.kernel.reconciler import Reconciler
from netpolicy.kernel.values import (
    KernelDiff,
    KernelError,
    KernelStatus,
    LearnedRefusal,
    Problem,
    Promotion,
)
from netpolicy.kernel.learning import Learning
from netpolicy.model.plan import KernelPlan, ListenerPlan
from tests.support.wait import wait_until_async


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryKernel(Backend):
    """A kernel that holds one plan, timed promotions and learned refusals, and can be broken
    on purpose. Like the real backends, an apply over another generation empties the learned."""

    name = "memory"
    max_promote_seconds = 1000

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.installed: KernelPlan | None = None
        self.timed: dict[tuple[str, str], float] = {}
        self.learnt: dict[tuple[str, str], float] = {}
        self.calls: list[str] = []
        self.fail_with: str | None = None
        self.cheap_blind = False  # quick_diff reports in sync whatever is installed

    def _compare(self, plan: KernelPlan) -> KernelDiff:
        if self.fail_with:
            raise KernelError(self.fail_with)
        if self.installed is None:
            return KernelDiff(self.name, plan.generation, None, (Problem("missing-table", "memory"),))
        if self.installed != plan:
            return KernelDiff(self.name, plan.generation, self.installed.generation, (Problem("generation", "memory"),))
        return KernelDiff(self.name, plan.generation, plan.generation)

    def diff(self, plan: KernelPlan) -> KernelDiff:
        self.calls.append("diff")
        return self._compare(plan)

    def quick_diff(self, plan: KernelPlan) -> KernelDiff:
        self.calls.append("quick_diff")
        if self.cheap_blind:
            return KernelDiff(self.name, plan.generation, plan.generation)
        return self._compare(plan)

    def apply(self, plan: KernelPlan) -> KernelDiff:
        self.calls.append("apply")
        result = self._compare(plan)
        if self.installed is None or self.installed.generation != plan.generation:
            self.learnt.clear()
        self.installed = plan
        return result

    def flush(self) -> bool:
        found = self.installed is not None
        self.installed = None
        self.timed.clear()
        self.learnt.clear()
        return found

    def status(self, plan: KernelPlan | None = None) -> KernelStatus:
        return KernelStatus(self.name, self.installed.generation if self.installed else None)

    def promote(self, listener: str, address: str, seconds: float) -> None:
        assert seconds <= self.max_promote_seconds
        self.timed[(listener_id(listener), address)] = self.clock() + seconds

    def promoted(self) -> list[Promotion]:
        now = self.clock()
        return [Promotion(lid, addr, until - now) for (lid, addr), until in self.timed.items() if until > now]

    def learn(self, listener: str, hosts: Mapping[str, int]) -> None:
        self.calls.append("learn")
        if self.fail_with:
            raise KernelError(self.fail_with)
        for address, seconds in hosts.items():
            self.learnt.setdefault((listener_id(listener), address), self.clock() + seconds)

    def learned(self) -> list[LearnedRefusal]:
        self.calls.append("learned")
        now = self.clock()
        return [LearnedRefusal(lid, addr, until - now) for (lid, addr), until in self.learnt.items() if until > now]


def plan(generation: str = "g1") -> KernelPlan:
    return KernelPlan(generation, (ListenerPlan("In-Mail", "0.0.0.0", 25, True, ("192.0.2.0/24",)),))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kernel(clock: Clock) -> MemoryKernel:
    return MemoryKernel(clock)


def test_first_check_applies_then_checks_are_cheap(kernel: MemoryKernel) -> None:
    rec = Reconciler(kernel, plan())
    assert rec.check_once().applied
    kernel.calls.clear()
    result = rec.check_once()
    assert not result.applied and not result.repaired
    assert kernel.calls == ["quick_diff"] and rec.repairs == 0 and rec.checks == 2


def test_drift_is_repaired_counted_and_logged(kernel: MemoryKernel, caplog: pytest.LogCaptureFixture) -> None:
    rec = Reconciler(kernel, plan())
    rec.check_once()
    kernel.flush()
    caplog.set_level(logging.WARNING, logger="netpolicy.reconciler")
    result = rec.check_once()
    assert result.repaired and rec.repairs == 1 and kernel.installed == plan()
    (record,) = [r for r in caplog.records if r.name == "netpolicy.reconciler"]
    assert "drift repaired (repair 1" in record.getMessage() and "! missing table: memory" in record.getMessage()
    assert not rec.check_once().repaired and rec.repairs == 1


def test_a_new_plan_is_applied_not_counted_as_a_repair(kernel: MemoryKernel) -> None:
    rec = Reconciler(kernel, plan())
    rec.check_once()
    rec.set_plan(plan("g2"))
    assert rec.plan.generation == "g2"
    result = rec.check_once()
    assert result.applied and result.diff is not None and not result.diff.in_sync
    assert kernel.installed == plan("g2") and rec.repairs == 0


def test_promotions_survive_a_flushed_kernel_with_the_time_they_have_left(kernel: MemoryKernel, clock: Clock) -> None:
    rec = Reconciler(kernel, plan(), clock=clock)
    rec.check_once()
    rec.promote("In-Mail", "192.0.2.9", 300)
    rec.promote("In-Mail", "2001:db8::0009", 30)
    clock.now += 100
    kernel.flush()
    assert rec.check_once().repaired
    left = {p.address: p.expires_in for p in kernel.promoted()}
    assert left == {"192.0.2.9": pytest.approx(200)}  # the 30-second one has lapsed: not put back


def test_promotions_longer_than_the_kernel_can_hold_are_renewed(kernel: MemoryKernel, clock: Clock) -> None:
    rec = Reconciler(kernel, plan(), clock=clock)
    rec.check_once()
    rec.promote("In-Mail", "192.0.2.9", 2500)
    assert kernel.promoted()[0].expires_in == 1000
    clock.now += 900  # 100 s left in the kernel: not yet due
    rec.check_once()
    assert kernel.promoted()[0].expires_in == pytest.approx(100)
    clock.now += 50  # 50 s left, 1550 wanted: renewed as far as the kernel allows
    rec.check_once()
    assert kernel.promoted()[0].expires_in == 1000
    clock.now += 1600  # past the wanted 2500 s: forgotten, the kernel lets it lapse
    rec.check_once()
    assert kernel.promoted() == []


def test_run_logs_errors_once_and_keeps_going(kernel: MemoryKernel, caplog: pytest.LogCaptureFixture) -> None:
    """Several failing rounds log the error once; the loop goes on, applies once the kernel
    answers again, and keeps checking after that."""
    rec = Reconciler(kernel, plan())
    caplog.set_level(logging.ERROR, logger="netpolicy.reconciler")

    async def scenario() -> None:
        kernel.fail_with = "netlink went away"
        task = asyncio.create_task(rec.run(interval=0.01))
        await wait_until_async(lambda: rec.checks >= 3, "three failed rounds", timeout=10)
        failed_rounds = rec.checks
        kernel.fail_with = None
        await wait_until_async(lambda: kernel.installed is not None, "the plan applied once the kernel answers", timeout=10)
        await wait_until_async(lambda: rec.checks >= failed_rounds + 3 and kernel.calls.count("quick_diff") >= 2,
                               "three more rounds, checking the applied plan", timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.name == "netpolicy.reconciler"]
    assert errors == ["reconciler: netlink went away"]
    assert rec.last_error is None and kernel.installed == plan()


def test_a_full_check_replaces_the_cheap_one_every_full_sync_period(kernel: MemoryKernel, clock: Clock) -> None:
    rec = Reconciler(kernel, plan(), full_sync=300, clock=clock)
    rec.check_once()
    kernel.calls.clear()
    clock.now += 299
    rec.check_once()
    clock.now += 1
    rec.check_once()
    rec.check_once()
    clock.now += 300
    rec.check_once()
    assert kernel.calls == ["quick_diff", "diff", "quick_diff", "diff"] and rec.full_checks == 2


def test_drift_only_a_full_check_sees_is_repaired_at_the_next_full_sync(kernel: MemoryKernel, clock: Clock) -> None:
    """A kernel whose cheap check trusts what it last wrote (like ipset's, while set sizes
    hold): drift behind it is found by the periodic full check and repaired."""
    rec = Reconciler(kernel, plan(), full_sync=60, clock=clock)
    rec.check_once()
    kernel.cheap_blind = True
    kernel.installed = plan("someone else's")
    assert not rec.check_once().repaired
    clock.now += 60
    result = rec.check_once()
    assert result.repaired and rec.repairs == 1 and kernel.installed == plan()


def learning(address: str, seconds: int, generation: str = "g1", listener: str = "In-Mail") -> Learning:
    return Learning(listener, address, seconds, 0.0, generation)


def test_learned_refusals_survive_a_flushed_kernel_with_the_time_they_have_left(kernel: MemoryKernel, clock: Clock) -> None:
    rec = Reconciler(kernel, plan(), clock=clock)
    rec.check_once()
    batch = [learning("192.0.2.9", 300), learning("192.0.2.10", 30)]
    assert rec.learn(batch) == batch
    clock.now += 100
    kernel.flush()
    assert rec.check_once().repaired
    assert {r.address: r.expires_in for r in kernel.learned()} == {"192.0.2.9": pytest.approx(200)}


def test_learned_refusals_are_read_back_only_after_drift_or_on_a_full_check(kernel: MemoryKernel, clock: Clock) -> None:
    """Tens of thousands may be held: the cheap check every second must not dump them."""
    rec = Reconciler(kernel, plan(), full_sync=300, clock=clock)
    rec.check_once()
    rec.learn([learning("192.0.2.9", 600)])
    kernel.calls.clear()
    rec.check_once()
    assert kernel.calls == ["quick_diff"]
    kernel.learnt.clear()  # drift no structural check sees: a deleted element
    clock.now += 300
    rec.check_once()
    assert kernel.calls == ["quick_diff", "diff", "learned", "learn"]
    assert [r.address for r in kernel.learned()] == ["192.0.2.9"]


def test_a_new_policy_forgets_learned_refusals_and_keeps_promotions(kernel: MemoryKernel, clock: Clock) -> None:
    rec = Reconciler(kernel, plan(), clock=clock)
    rec.check_once()
    rec.promote("In-Mail", "192.0.2.8", 300)
    rec.learn([learning("192.0.2.9", 300)])
    rec.set_plan(plan("g2"))
    rec.check_once()
    assert kernel.learned() == [] and [p.address for p in kernel.promoted()] == ["192.0.2.8"]
    kernel.flush()  # nothing learned under g1 comes back with the repair
    assert rec.check_once().repaired
    assert kernel.learned() == [] and [p.address for p in kernel.promoted()] == ["192.0.2.8"]


def test_only_what_was_decided_under_the_plan_in_force_is_learned(kernel: MemoryKernel) -> None:
    rec = Reconciler(kernel, plan("g2"))
    rec.check_once()
    current, stale, elsewhere = learning("192.0.2.9", 60, "g2"), learning("192.0.2.10", 60, "g1"), learning("192.0.2.11", 60, "g2", "Other")
    assert rec.learn([current, stale, elsewhere]) == [current]
    assert [r.address for r in kernel.learned()] == ["192.0.2.9"]


def test_learned_refusals_the_kernel_refused_are_put_back_by_the_repair(kernel: MemoryKernel) -> None:
    rec = Reconciler(kernel, plan())
    rec.check_once()
    kernel.flush()
    kernel.fail_with = "no such set"
    batch = [learning("192.0.2.9", 300)]
    assert rec.learn(batch) == batch
    kernel.fail_with = None
    assert rec.check_once().repaired
    assert [r.address for r in kernel.learned()] == ["192.0.2.9"]


def test_a_restart_under_the_same_policy_takes_over_what_the_kernel_learned(kernel: MemoryKernel, clock: Clock) -> None:
    Reconciler(kernel, plan(), clock=clock).check_once()
    kernel.learn("In-Mail", {"192.0.2.9": 300})
    clock.now += 100
    restarted = Reconciler(kernel, plan(), clock=clock)
    restarted.check_once()
    kernel.flush()
    assert restarted.check_once().repaired
    assert {r.address: r.expires_in for r in kernel.learned()} == {"192.0.2.9": pytest.approx(200)}
