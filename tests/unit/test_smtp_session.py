"""PolicySMTP's contract with aiosmtpd 1.4.6, and the connect-time decision's fallbacks."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from netpolicy.model import parse_policy
from netpolicy.model.hat import Fact, build_hat_indexes
from netpolicy.smtp.counters import InMemoryCounters
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.services import (
    ListenerStats,
    Services,
    SessionLimits,
    build_generation,
)
from netpolicy.smtp.session import PolicySMTP, client_address
from netpolicy.smtp.spool import ByteBudget
from tests.support.policies import LOOPBACK_POLICY


class SlowResolver:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        if self.fail:
            raise RuntimeError("resolver bug")
        await asyncio.sleep(self.delay)
        return Fact(None, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> Fact[bool]:
        await asyncio.sleep(self.delay)
        return Fact(True, 300.0)


def session(tmp_path: Path, resolver: object, limits: SessionLimits = SessionLimits()) -> PolicySMTP:
    policy = parse_policy(LOOPBACK_POLICY.format(maildir=tmp_path / "md"), "p.yml")
    generation = build_generation(policy.listener("In"), build_hat_indexes(policy)["In"])
    budget = ByteBudget(limits.inflight_bytes)
    services = Services(resolver, InMemoryCounters(), MailLog(stream=io.StringIO()), limits, ListenerStats(), None, budget)  # type: ignore[arg-type]
    return PolicySMTP(generation, services)


def test_aiosmtpd_is_the_pinned_version() -> None:
    # session.PolicySMTP replaces SMTP._handle_client and SMTP.__init__: re-check both on upgrade.
    assert aiosmtpd.__version__ == "1.4.6"


async def test_every_attribute_aiosmtpd_sets_is_set(tmp_path: Path) -> None:
    class Handler:
        pass

    theirs = set(vars(SMTP(Handler(), hostname="x")))
    ours = set(vars(session(tmp_path, SlowResolver())))
    assert theirs <= ours, theirs - ours


@pytest.mark.parametrize(("peer", "address"), [
    (("192.0.2.1", 25), "192.0.2.1"),
    (("::ffff:192.0.2.1", 25, 0, 0), "192.0.2.1"),
    (("2001:db8::1", 25, 0, 0), "2001:db8::1"),
    (("fe80::1%veth0", 25, 0, 2), "fe80::1"),
])
def test_client_address(peer: tuple[object, ...], address: str) -> None:
    assert client_address(peer) == address


async def test_decision_uses_dns_when_it_answers(tmp_path: Path) -> None:
    s = session(tmp_path, SlowResolver())
    s.address = "192.0.2.5"
    assert (await s._decide()).sender_group == "LISTED"


async def test_slow_dns_falls_back_to_the_address_alone(tmp_path: Path) -> None:
    s = session(tmp_path, SlowResolver(delay=5), SessionLimits(decision_timeout=0.2))
    s.address = "192.0.2.5"
    loop = asyncio.get_running_loop()
    started = loop.time()
    decision = await s._decide()
    assert decision.sender_group == "ALL" and loop.time() - started < 1


async def test_broken_resolver_falls_back_to_the_address_alone(tmp_path: Path) -> None:
    s = session(tmp_path, SlowResolver(fail=True))
    s.address = "192.0.2.5"
    assert (await s._decide()).sender_group == "ALL"
