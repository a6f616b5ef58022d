"""Keeps the kernel on the desired plan: applies new plans, detects drift, repairs it.

Other tools flush rulesets (``nft flush ruleset``, firewalld reloads, Docker), delete rules or
elements, or drop the INPUT jump. The reconciler holds the desired plan in memory and, every
interval, asks the backend for a cheap check (``quick_diff``: on nftables one netlink request
when the ruleset generation did not move; otherwise the table without its elements plus set
sizes). Only when that shows a difference does it repair, by the same atomic ``apply`` a
policy change uses, and it logs what was wrong (logger ``netpolicy.reconciler``).

A cheap check cannot see drift that keeps a set's size (one element deleted, another added)
where the dataplane has no generation counter (ipset). So every ``full_sync`` seconds (serve
``--full-sync``, default 300) the check is a full ``diff`` instead, which reads every element
back (on nftables by batched lookups: ~6 s for 1M hosts, ~9 s for 1M networks, 2-3% of the
time at the default period).

It also remembers the hosts promoted at runtime: they are not part of the plan, so a flushed
table loses them; the reconciler puts them back with the time they have left, and renews
promotions longer than the kernel can hold in one go before they lapse.

Learned refusals (netpolicy.kernel.learning) are remembered the same way and put back after a
repair, or when a full check finds them gone, with the time they have left; never renewed (a
learned refusal is at most ``learn_refusals`` seconds, which both backends hold in one go).
They belong to the policy generation they were decided under: a batch decided under another
generation than the plan's is dropped, and applying a plan of a new generation forgets them
(the backend empties the learned sets in the same apply); a restarted serve that finds its own
generation in force takes over those the kernel kept. Unlike the promotions, which are
few, they are not read back on every check: there may be tens of thousands, and a dump of a
set costs more than the one-request check it would ride on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from netpolicy.kernel.base import Backend
from netpolicy.kernel.layout import listener_id
from netpolicy.kernel.learning import MIN_SECONDS, Deadlines, Learning
from netpolicy.kernel.values import KernelDiff, KernelError
from netpolicy.model.plan import KernelPlan

log = logging.getLogger("netpolicy.reconciler")

MAX_LOGGED_LINES = 20  # per repair; the rest is summarised
RENEW_WINDOW = 60.0  # renew a promotion the kernel will drop within this many seconds
SLACK = 2.0  # seconds of disagreement between our clock and the kernel's timers that are fine
FULL_SYNC = 300.0  # seconds between full reads of everything the backend owns


@dataclass(frozen=True)
class CheckResult:
    """What one check did: ``applied`` a new plan, ``repaired`` drift, or neither (in sync)."""

    applied: bool = False
    repaired: bool = False
    diff: KernelDiff | None = None


class Reconciler:
    """Library part of ``serve``: one desired plan, one backend, repairs counted."""

    def __init__(
        self, backend: Backend, plan: KernelPlan, *, full_sync: float = FULL_SYNC, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backend = backend
        self.repairs = 0
        self.checks = 0
        self.full_checks = 0
        self.full_sync = full_sync
        self.last_error: str | None = None
        self._plan = plan
        self._applied: KernelPlan | None = None
        self._clock = clock
        self._next_full = clock() + full_sync
        self._promotions: dict[tuple[str, str], float] = {}  # (listener, address) -> deadline
        self._learned = Deadlines()  # (listener, address) -> deadline, on ``clock``
        self._lock = threading.Lock()

    @property
    def plan(self) -> KernelPlan:
        return self._plan

    def set_plan(self, plan: KernelPlan) -> None:
        """A reload: the next check applies ``plan`` (promotions are kept)."""
        with self._lock:
            self._plan = plan

    def promote(self, listener: str, address: str, seconds: float) -> None:
        """Promote a host now and keep it promoted for ``seconds``, across drift repairs."""
        address = str(ipaddress.ip_address(address))
        with self._lock:
            self.backend.promote(listener, address, min(seconds, self.backend.max_promote_seconds))
            self._promotions[(listener, address)] = self._clock() + seconds

    def learn(self, batch: list[Learning]) -> list[Learning]:
        """Put learned refusals into the kernel and remember them across drift repairs; returns
        those taken: the ones decided under the plan's generation, on a listener it enforces in
        the kernel. Blocking: run it in a thread.

        One backend call per listener. If the kernel refuses (the table was flushed a moment
        ago), they are still remembered: the repair that follows puts them back."""
        with self._lock:
            plan = self._plan
            kernel = {lp.name for lp in plan.kernel_listeners()}
            taken = [item for item in batch if item.generation == plan.generation and item.listener in kernel]
            now = self._clock()
            self._learned.expire(now)
            by_listener: dict[str, dict[str, int]] = {}
            for item in taken:
                self._learned.put((item.listener, item.address), now + item.seconds)
                by_listener.setdefault(item.listener, {})[item.address] = item.seconds
            for listener, hosts in by_listener.items():
                try:
                    self.backend.learn(listener, hosts)
                except KernelError as exc:
                    log.error("could not learn %d refusals on %s: %s", len(hosts), listener, exc)
            return taken

    def check_once(self) -> CheckResult:
        """Apply a new plan, or check for drift and repair it. Blocking: run it in a thread."""
        with self._lock:
            self.checks += 1
            plan = self._plan
            if self._applied is not plan:
                if self._applied is not None and self._applied.generation != plan.generation:
                    self._learned.clear()  # the backend empties the learned sets in this apply
                first = self._applied is None
                diff = self.backend.apply(plan)
                self._applied = plan
                if not diff.in_sync:
                    log.info("applied policy generation %s (%d element changes)", plan.generation, diff.element_changes)
                if first and diff.kernel_generation == plan.generation:
                    self._adopt_learned()
                self._renew_promotions()
                self._restore_learned()
                return CheckResult(applied=True, diff=diff)
            full = self._clock() >= self._next_full
            if full:
                found = self.backend.diff(plan)
                self.full_checks += 1
                self._next_full = self._clock() + self.full_sync
            else:
                found = self.backend.quick_diff(plan)
            if found.in_sync:
                self._renew_promotions()
                if full:
                    self._restore_learned()
                return CheckResult()
            repaired = self.backend.apply(plan)
            if repaired.in_sync:  # someone put it back between our check and the repair
                log.info("drift gone before repair: %s", _summary(found))
                return CheckResult()
            self.repairs += 1
            log.warning(
                "drift repaired (repair %d, %s backend, generation %s): %s",
                self.repairs, self.backend.name, plan.generation, _summary(repaired),
            )
            self._renew_promotions()
            self._restore_learned()
            return CheckResult(repaired=True, diff=repaired)

    async def run(self, interval: float = 1.0, executor: Executor | None = None) -> None:
        """Check every ``interval`` seconds until cancelled; errors are logged, not fatal.

        Checks run in ``executor`` (default: asyncio's), since netfilter calls block; tests pass
        one whose thread lives in their network namespace.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(executor, self.check_once)
                self.last_error = None
            except KernelError as exc:
                if str(exc) != self.last_error:
                    log.error("reconciler: %s", exc)
                self.last_error = str(exc)
            await asyncio.sleep(interval)

    def _renew_promotions(self) -> None:
        """Put back promotions the kernel lost (a flushed table, a deleted element) and renew
        those the kernel would drop before their time (longer than it can hold in one go).
        The timed sets are small, so reading them on every check costs little."""
        now = self._clock()
        for key in [k for k, deadline in self._promotions.items() if deadline - now <= SLACK]:
            del self._promotions[key]
        if not self._promotions:
            return
        kernel = {(p.listener, p.address): p.expires_in for p in self.backend.promoted()}
        for (listener, address), deadline in self._promotions.items():
            left = deadline - now
            have = kernel.get((listener_id(listener), address))
            if have is not None and (have >= left - SLACK or have > RENEW_WINDOW):
                continue
            seconds = min(left, self.backend.max_promote_seconds)
            try:
                self.backend.promote(listener, address, seconds)
            except KernelError as exc:
                log.error("could not restore the promotion of %s on %s: %s", address, listener, exc)
                continue
            what = "restored" if have is None else "renewed"
            log.warning("%s the promotion of %s on %s (%.0f s left)", what, address, listener, left)


    def _adopt_learned(self) -> None:
        """A restarted serve finding its policy's generation in force: the learned refusals
        the kernel kept were decided under that policy, so they are remembered (and put back
        after drift) for the time they have left."""
        now = self._clock()
        by_lid = {listener_id(lp.name): lp.name for lp in self._plan.kernel_listeners()}
        for found in self.backend.learned():
            listener = by_lid.get(found.listener)
            if listener is not None and found.expires_in >= MIN_SECONDS:
                self._learned.put((listener, found.address), now + found.expires_in)

    def _restore_learned(self) -> None:
        """Put back the learned refusals the kernel lost, with the time they have left."""
        now = self._clock()
        self._learned.expire(now + SLACK)
        if not self._learned:
            return
        held = {(found.listener, found.address) for found in self.backend.learned()}
        lost: dict[str, dict[str, int]] = {}
        for (listener, address), deadline in self._learned:
            seconds = int(deadline - now)
            if seconds >= MIN_SECONDS and (listener_id(listener), address) not in held:
                lost.setdefault(listener, {})[address] = seconds
        for listener, hosts in lost.items():
            try:
                self.backend.learn(listener, hosts)
            except KernelError as exc:
                log.error("could not restore %d learned refusals on %s: %s", len(hosts), listener, exc)
                continue
            log.warning("restored %d learned refusals on %s", len(hosts), listener)


def _summary(diff: KernelDiff) -> str:
    lines = diff.lines(MAX_LOGGED_LINES)
    more = len(diff.problems) + diff.element_changes - len(lines)
    return "; ".join(lines) + (f"; and {more} more changes" if more > 0 else "")
