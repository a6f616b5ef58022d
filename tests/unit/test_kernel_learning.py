"""Learned refusals (netpolicy.kernel.learning): what may be learned and for how long, checked
as properties over random policies and DNS answers; the event-loop learner's bounds, its
de-duplication and its batches."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.kernel.learning import Deadlines, Learner, Learning, learn_seconds
from netpolicy.model.entries import AnswerPattern
from netpolicy.model.hat import Decision, Fact, build_hat_indexes
from netpolicy.model.policy import Policy, Reputation, ReputationSource
from netpolicy.model.reputation import reputation_score
from tests.support.policies import make_policy
from tests.support.wait import wait_until_async

BEHAVIORS = ["accept", "reject", "tcprefuse", "continue"]
ZONES = ["z1.test", "z2.test", "z3.test"]
HOSTNAMES = ["mx.a.test", ".b.test"]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
REPUTATION = Reputation(sources=[ReputationSource(dnslist="z1.test", weight=-6), ReputationSource(dnslist="z3.test", weight=4)])

entry = st.sampled_from(["10.0.0.1", "10.0.0.0/30", "2001:db8::/126", *HOSTNAMES, *(f"dnslist[{z}]" for z in ZONES),
                         "score[-10:-3]", "score[none]", "score[0:10]"])
# per zone: (listed, TTL); TTL 0 is a failed lookup
zone_answer = st.tuples(st.booleans(), st.sampled_from([0, 1, 5, 60, 3600, 86400]))


class Answers:
    """A resolver answering from fixed facts, remembering the TTLs it gave."""

    def __init__(self, zones: dict[str, tuple[bool, int]], hostname: tuple[str | None, int]) -> None:
        self.zones = zones
        self.hostname = hostname
        self.ttls: list[float] = []

    def listed(self, zone: str, _pattern: AnswerPattern) -> bool | None:
        listed, ttl = self.zones[zone]
        return None if ttl == 0 else listed

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        name, ttl = self.hostname
        self.ttls.append(ttl)
        return Fact(name if ttl else None, ttl)

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> Fact[bool]:
        ttl = self.zones[zone][1]
        self.ttls.append(ttl)
        return Fact(self.listed(zone, pattern) is True, ttl)

    async def score(self, address: str, reputation: Reputation) -> Fact[float | None]:
        ttl = min(self.zones[source.dnslist][1] for source in reputation.sources)
        self.ttls.append(ttl)
        return Fact(reputation_score(reputation, self.listed), ttl)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    n = draw(st.integers(1, 4))
    groups = {f"G{i}": draw(st.lists(entry, min_size=1, max_size=3)) for i in range(n)}
    rows = [(g, draw(st.sampled_from(BEHAVIORS))) for g in groups]
    policy = make_policy(rows, groups, kernel=draw(st.booleans()), all_behavior=draw(st.sampled_from(["accept", "tcprefuse"])))
    return policy.model_copy(update={"reputation": REPUTATION, "learn_refusals": draw(st.sampled_from([0, 1, 30, 3600]))})


@settings(max_examples=400, deadline=None)
@given(policies(), st.sampled_from(ADDRESSES), st.fixed_dictionaries({z: zone_answer for z in ZONES}),
       st.tuples(st.sampled_from([None, "mx.a.test", "x.b.test"]), st.sampled_from([0, 2, 600])))
def test_a_learned_address_is_tcprefuse_again_under_the_same_answers(
        policy: Policy, address: str, zones: dict[str, tuple[bool, int]], hostname: tuple[str | None, int]) -> None:
    listener = policy.listeners[0]
    hat = build_hat_indexes(policy)[listener.name]
    answers = Answers(zones, hostname)
    decision = asyncio.run(hat.decide_async(address, answers))
    seconds = learn_seconds(decision, listener, policy.learn_refusals)
    if seconds is None:
        return
    assert listener.kernel, "learned on a listener with kernel: false"
    assert decision.behavior == "tcprefuse"
    assert 1 <= seconds <= min(answers.ttls) and seconds <= policy.learn_refusals
    again = hat.decide(address, hostname=hostname[0], dnslisted=lambda zone, pattern: answers.listed(zone, pattern) is True)
    assert again.behavior == "tcprefuse", (decision, again)


def test_what_is_not_learned() -> None:
    """Sanity for the property's strategies: each condition alone stops learning."""
    policy = make_policy([("G", "tcprefuse")], {"G": ["dnslist[z1.test]", "10.0.0.9"]})
    listener = policy.listeners[0]
    hat = build_hat_indexes(policy)[listener.name]

    def decide(address: str, ttl: int) -> int | None:
        decision = asyncio.run(hat.decide_async(address, Answers({"z1.test": (True, ttl)}, (None, 60))))
        return learn_seconds(decision, listener, 3600)

    assert decide("10.0.0.1", 300) == 300
    assert decide("10.0.0.1", 86400) == 3600  # capped by learn_refusals
    assert decide("10.0.0.1", 0) is None  # a failed lookup is not an answer
    assert decide("10.0.0.9", 300) is None  # by address alone: the compiler's business
    unkerneled = make_policy([("G", "tcprefuse")], {"G": ["dnslist[z1.test]"]}, kernel=False)
    decision = asyncio.run(build_hat_indexes(unkerneled)["L"].decide_async("10.0.0.1", Answers({"z1.test": (True, 300)}, (None, 60))))
    assert decision.behavior == "tcprefuse" and learn_seconds(decision, unkerneled.listeners[0], 3600) is None


BLOCKED = build_hat_indexes(make_policy([("G", "tcprefuse")], {"G": ["dnslist[z1.test]"]}))["L"].decide(
    "10.0.0.1", dnslisted=lambda zone, pattern: True)


def refusal(listener: str, address: str) -> Decision:
    """A TCPREFUSE by a DNS list, of ``address`` on ``listener``."""
    return replace(BLOCKED, listener=listener, address=address)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadlines_expire_in_order_and_count_per_listener() -> None:
    d = Deadlines()
    d.put(("A", "192.0.2.1"), 10)
    d.put(("A", "192.0.2.2"), 5)
    d.put(("B", "192.0.2.1"), 7)
    d.put(("A", "192.0.2.2"), 20)  # a new deadline replaces the old one
    assert d.counts() == {"A": 2, "B": 1}
    d.expire(9)
    assert d.counts() == {"A": 2} and d.get(("A", "192.0.2.2")) == 20
    d.expire(10)
    assert sorted(d) == [(("A", "192.0.2.2"), 20)]


def test_an_address_held_or_queued_is_not_offered_twice() -> None:
    clock = Clock()
    learner = Learner(clock=clock)
    assert learner.offer(refusal("In", "192.0.2.1"), 60, "g1")
    assert not learner.offer(refusal("In", "192.0.2.1"), 60, "g1")
    assert learner.offer(refusal("Other", "192.0.2.1"), 60, "g1")  # another listener's set
    clock.now += 60
    assert learner.offer(refusal("In", "192.0.2.1"), 60, "g1")  # its time ran out
    assert learner.held() == {"In": 1}


def test_past_the_cap_nothing_is_learned_until_entries_expire(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    learner = Learner(cap=3, clock=clock)
    caplog.set_level(logging.WARNING, logger="netpolicy.learning")
    assert [learner.offer(refusal("In", f"192.0.2.{i}"), 10 + i, "g1") for i in range(5)] == [True, True, True, False, False]
    assert learner.skipped == {"In": 2} and learner.held() == {"In": 3}
    assert len(caplog.records) == 1 and "holds 3 learned refusals" in caplog.records[0].getMessage()
    clock.now += 10
    assert learner.offer(refusal("In", "192.0.2.9"), 10, "g1")  # the first one expired: room for one


class Sink:
    def __init__(self, generation: str) -> None:
        self.generation = generation
        self.batches: list[list[Learning]] = []

    def learn(self, batch: list[Learning]) -> list[Learning]:
        self.batches.append(batch)
        return [item for item in batch if item.generation == self.generation]


def test_batches_reach_the_sink_and_what_it_drops_may_be_learned_again() -> None:
    learner = Learner()
    sink = Sink("g2")

    async def scenario() -> None:
        task = asyncio.create_task(learner.run(sink))
        learner.offer(refusal("In", "192.0.2.1"), 60, "g1")  # decided under the policy just replaced
        learner.offer(refusal("In", "192.0.2.2"), 60, "g2")
        learner.offer(refusal("In", "192.0.2.3"), 60, "g2")
        await wait_until_async(lambda: sum(learner.learned.values()) > 0, "the batch settled")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [[i.address for i in b] for b in sink.batches] == [["192.0.2.1", "192.0.2.2", "192.0.2.3"]]
    assert learner.learned == {"In": 2} and learner.held() == {"In": 2}
    assert learner.offer(refusal("In", "192.0.2.1"), 60, "g2")


def test_a_held_address_keeps_the_reason_it_was_refused_for() -> None:
    """What the kernel's refusal of it logs: the DNS list, not what its address alone decides."""
    clock = Clock()
    learner = Learner(clock=clock)
    learner.offer(refusal("In", "192.0.2.1"), 60, "g1")
    assert learner.why("In", "192.0.2.1") == ("G", "dnslist[z1.test]")
    assert learner.why("Other", "192.0.2.1") is None
    clock.now += 60
    assert learner.why("In", "192.0.2.1") is None


def test_forget_empties_what_is_held() -> None:
    learner = Learner()
    learner.offer(refusal("In", "192.0.2.1"), 60, "g1")
    learner.forget()
    assert learner.held() == {} and learner.offer(refusal("In", "192.0.2.1"), 60, "g2")
