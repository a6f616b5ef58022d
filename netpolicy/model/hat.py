"""Host Access Table matching: which sender group, entry and mail flow policy a host gets.

First match wins, top to bottom; a row whose policy is CONTINUE is passed over. Within a group,
address entries are looked up in a bisect index (a million entries cost a few microseconds),
then host-name entries against the caller's forward-confirmed PTR name, then DNS lists.

Host names, DNS lists and the reputation score may need network lookups, which the SMTP side
does asynchronously and ``trace`` does not do at all. So the walk itself is a generator that
*asks* for those facts (``NeedScore`` / ``NeedHostname`` / ``NeedDnsList``) and is driven either
synchronously (facts given up front) or asynchronously (facts fetched from a resolver only when a
row actually needs them).

Each asynchronous fact comes with how long it holds (``Fact.ttl``): a decision remembers the
shortest, which is how long a TCPREFUSE resting on DNS may be learned by the kernel (SPEC.md
section 7). A fact from a failed lookup holds for 0 s, so nothing is learned from a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from netpolicy.model.effective import EffectivePolicy, effective_policy
from netpolicy.model.entries import (
    AddressEntry,
    AddressSetEntry,
    AllEntry,
    AnswerPattern,
    DnsListEntry,
    Entry,
    HostnameEntry,
    ScoreEntry,
    address_to_int,
)
from netpolicy.model.intervals import LabelledIndex
from netpolicy.model.policy import Listener, Policy, Reputation
from netpolicy.model.reputation import reputation_score

T = TypeVar("T")


@dataclass(frozen=True)
class NeedHostname:
    """The walk needs the verified reverse-DNS name (None when it could not be verified)."""


@dataclass(frozen=True)
class NeedDnsList:
    """The walk needs to know whether ``zone`` answers for the address something ``pattern`` matches."""

    zone: str
    pattern: AnswerPattern


@dataclass(frozen=True)
class NeedScore:
    """The walk needs the host's reputation score (None: every source failed)."""

    reputation: Reputation


Question = NeedHostname | NeedDnsList | NeedScore
Answer = str | bool | float | None


@dataclass(frozen=True, slots=True)
class Fact(Generic[T]):
    """A looked-up value and the seconds it holds for (its DNS TTL; 0 for a failed lookup)."""

    value: T
    ttl: float


class Resolver(Protocol):
    """What the HAT needs from DNS; implemented by ``netpolicy.smtp.resolver.DnsResolver``."""

    async def verified_hostname(self, address: str) -> Fact[str | None]: ...

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> Fact[bool]: ...

    async def score(self, address: str, reputation: Reputation) -> Fact[float | None]: ...


@dataclass(frozen=True)
class Decision:
    listener: str
    address: str
    sender_group: str
    match: str
    policy: EffectivePolicy
    hostname: str | None = None
    score: float | None = None
    scored: bool = False  # the policy has a reputation block, so ``score`` was asked for
    dns_ttl: float | None = None  # shortest TTL of the DNS facts asked; None when none was
    country: str | None = None  # from the policy's GeoIP database, when it has one

    @property
    def behavior(self) -> str:
        return self.policy.behavior


class GroupIndex:
    """One sender group, indexed for lookups."""

    def __init__(self, name: str, entries: Iterable[Entry]) -> None:
        self.name = name
        self.is_all = name == "ALL"
        self.hostnames: list[HostnameEntry] = []
        self.dnslists: list[DnsListEntry] = []
        self.scores: list[ScoreEntry] = []
        intervals: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        texts: dict[int, list[str]] = {4: [], 6: []}  # entry text of each interval
        sources: dict[int, list[Entry]] = {4: [], 6: []}  # the entries that gave each family intervals
        for entry in entries:
            if isinstance(entry, AddressEntry):
                intervals[entry.family].append((entry.start, entry.end))
                texts[entry.family].append(entry.text)
                sources[entry.family].append(entry)
            elif isinstance(entry, AddressSetEntry):
                for fam, ivs in ((4, entry.v4), (6, entry.v6)):
                    if ivs:
                        intervals[fam] += ivs
                        texts[fam] += [entry.text] * len(ivs)
                        sources[fam].append(entry)
            elif isinstance(entry, HostnameEntry):
                self.hostnames.append(entry)
            elif isinstance(entry, DnsListEntry):
                self.dnslists.append(entry)
            elif isinstance(entry, ScoreEntry):
                self.scores.append(entry)
        self._texts = texts
        self._index: dict[int, LabelledIndex] = {}
        for fam, found in intervals.items():
            only = sources[fam][0] if len(sources[fam]) == 1 else None
            if isinstance(only, AddressSetEntry):  # a group that is one list: merged by the loader
                self._index[fam], self._texts[fam] = LabelledIndex.of_disjoint(found), [only.text]
            else:
                self._index[fam] = LabelledIndex.build(found)

    def address_match(self, family: int, value: int) -> str | None:
        label = self._index[family].find(value)
        return None if label is None else self._texts[family][label]

    @property
    def uncertain(self) -> bool:
        """True when membership can depend on DNS, not on the address alone."""
        return bool(self.hostnames or self.dnslists or self.scores)


class HatIndex:
    """The HAT of one listener, ready for lookups. Built once per policy generation."""

    def __init__(self, policy: Policy, listener: Listener, groups: dict[str, GroupIndex] | None = None) -> None:
        groups = groups if groups is not None else build_groups(policy)
        self.listener = listener
        self.reputation = policy.reputation
        self.countries = policy.geoip.table if policy.geoip is not None else None
        self.rows: list[tuple[GroupIndex, EffectivePolicy]] = []
        for row in listener.hat:
            mfp = policy.mail_flow_policies[row.policy]
            self.rows.append((groups[row.group], effective_policy(row.policy, mfp, listener.defaults)))

    def walk(self, address: str) -> Generator[Question, Answer, Decision]:
        """The decision for ``address``. The score is asked first whenever the policy has a
        reputation block: the decision line carries it (` SBRS -6.0`) whatever row decides."""
        family, value = address_to_int(address)
        country = None if self.countries is None else self.countries.country_of_value(family, value)
        hostname: str | None = None
        asked_hostname = False
        score: float | None = None
        if self.reputation is not None:
            answer = yield NeedScore(self.reputation)
            score = float(answer) if isinstance(answer, (int, float)) and not isinstance(answer, bool) else None
        for group, policy in self.rows:
            if policy.behavior == "continue":
                continue
            match = "ALL" if group.is_all else group.address_match(family, value)
            if match is None and group.hostnames:
                if not asked_hostname:
                    answer = yield NeedHostname()
                    hostname = answer if isinstance(answer, str) else None
                    asked_hostname = True
                if hostname is not None:
                    match = next((h.text for h in group.hostnames if h.matches(hostname)), None)
            if match is None and group.scores:
                match = next((s.text for s in group.scores if s.matches(score)), None)
            for dnslist in group.dnslists if match is None else ():
                if (yield NeedDnsList(dnslist.zone, dnslist.pattern)) is True:
                    match = dnslist.text
                    break
            if match is not None:
                return Decision(self.listener.name, address, group.name, match, policy, hostname,
                                score=score, scored=self.reputation is not None, country=country)
        raise AssertionError("a validated HAT ends with ALL")  # references.py guarantees it

    def decide(self, address: str, hostname: str | None = None,
               dnslisted: Callable[[str, AnswerPattern], bool] = lambda zone, pattern: False) -> Decision:
        """Synchronous decision with the DNS facts given up front (trace, tests, compiler checks);
        the score is computed from the same DNS-list answers (``reputation_score``)."""
        walk = self.walk(address)
        try:
            question = next(walk)
            while True:
                if isinstance(question, NeedHostname):
                    answer: Answer = hostname
                elif isinstance(question, NeedScore):
                    answer = reputation_score(question.reputation, dnslisted)
                else:
                    answer = dnslisted(question.zone, question.pattern)
                question = walk.send(answer)
        except StopIteration as stop:
            decision: Decision = stop.value
            return decision

    async def decide_async(self, address: str, resolver: Resolver) -> Decision:
        """Decision for a live connection: DNS is asked only when a row needs it. The decision
        carries the shortest TTL of the facts it was given (``dns_ttl``)."""
        walk = self.walk(address)
        ttl: float | None = None
        try:
            question = next(walk)
            while True:
                fact: Fact[str | None] | Fact[bool] | Fact[float | None]
                if isinstance(question, NeedHostname):
                    fact = await resolver.verified_hostname(address)
                elif isinstance(question, NeedScore):
                    fact = await resolver.score(address, question.reputation)
                else:
                    fact = await resolver.dnslisted(address, question.zone, question.pattern)
                ttl = fact.ttl if ttl is None else min(ttl, fact.ttl)
                question = walk.send(fact.value)
        except StopIteration as stop:
            final: Decision = stop.value
            return final if ttl is None else replace(final, dns_ttl=ttl)


def build_groups(policy: Policy) -> dict[str, GroupIndex]:
    """Index every sender group once; listeners sharing a group share its index."""
    groups = {name: GroupIndex(name, entries) for name, entries in policy.sender_groups.items()}
    groups["ALL"] = GroupIndex("ALL", [AllEntry()])
    return groups


def build_hat_indexes(policy: Policy) -> dict[str, HatIndex]:
    groups = build_groups(policy)
    return {listener.name: HatIndex(policy, listener, groups) for listener in policy.listeners}
