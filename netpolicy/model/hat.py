"""Host Access Table matching: which sender group, entry and mail flow policy a host gets.

First match wins, top to bottom; a row whose policy is CONTINUE is passed over. Within a group,
address entries are looked up in a bisect index (a million entries cost a few microseconds),
then host-name entries against the caller's forward-confirmed PTR name, then DNS lists.

Host names and DNS lists may need network lookups, which the SMTP side does asynchronously and
``trace`` does not do at all. So the walk itself is a generator that *asks* for those facts
(``NeedHostname`` / ``NeedDnsList``) and is driven either synchronously (facts given up front)
or asynchronously (facts fetched from a resolver only when a row actually needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

from netpolicy.model.effective import EffectivePolicy, effective_policy
from netpolicy.model.entries import (
    AddressEntry,
    AllEntry,
    AnswerPattern,
    DnsListEntry,
    Entry,
    HostnameEntry,
    address_to_int,
)
from netpolicy.model.intervals import LabelledIndex
from netpolicy.model.policy import Listener, Policy


@dataclass(frozen=True)
class NeedHostname:
    """The walk needs the verified reverse-DNS name (None when it could not be verified)."""


@dataclass(frozen=True)
class NeedDnsList:
    """The walk needs to know whether ``zone`` answers for the address something ``pattern`` matches."""

    zone: str
    pattern: AnswerPattern


Question = NeedHostname | NeedDnsList
Answer = str | bool | None


class Resolver(Protocol):
    """What the HAT needs from DNS; implemented by ``netpolicy.smtp.resolver.DnsResolver``."""

    async def verified_hostname(self, address: str) -> str | None: ...

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> bool: ...


@dataclass(frozen=True)
class Decision:
    listener: str
    address: str
    sender_group: str
    match: str
    policy: EffectivePolicy
    hostname: str | None = None

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
        by_family: dict[int, list[AddressEntry]] = {4: [], 6: []}
        for entry in entries:
            if isinstance(entry, AddressEntry):
                by_family[entry.family].append(entry)
            elif isinstance(entry, HostnameEntry):
                self.hostnames.append(entry)
            elif isinstance(entry, DnsListEntry):
                self.dnslists.append(entry)
        self._entries = by_family
        self._index = {fam: LabelledIndex.build([(e.start, e.end) for e in es]) for fam, es in by_family.items()}

    def address_match(self, family: int, value: int) -> str | None:
        label = self._index[family].find(value)
        return None if label is None else self._entries[family][label].text

    @property
    def uncertain(self) -> bool:
        """True when membership can depend on DNS, not on the address alone."""
        return bool(self.hostnames or self.dnslists)


class HatIndex:
    """The HAT of one listener, ready for lookups. Built once per policy generation."""

    def __init__(self, policy: Policy, listener: Listener, groups: dict[str, GroupIndex] | None = None) -> None:
        groups = groups if groups is not None else build_groups(policy)
        self.listener = listener
        self.rows: list[tuple[GroupIndex, EffectivePolicy]] = []
        for row in listener.hat:
            mfp = policy.mail_flow_policies[row.policy]
            self.rows.append((groups[row.group], effective_policy(row.policy, mfp, listener.defaults)))

    def walk(self, address: str) -> Generator[Question, Answer, Decision]:
        family, value = address_to_int(address)
        hostname: str | None = None
        asked_hostname = False
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
            for dnslist in group.dnslists if match is None else ():
                if (yield NeedDnsList(dnslist.zone, dnslist.pattern)) is True:
                    match = dnslist.text
                    break
            if match is not None:
                return Decision(self.listener.name, address, group.name, match, policy, hostname)
        raise AssertionError("a validated HAT ends with ALL")  # references.py guarantees it

    def decide(self, address: str, hostname: str | None = None,
               dnslisted: Callable[[str, AnswerPattern], bool] = lambda zone, pattern: False) -> Decision:
        """Synchronous decision with the DNS facts given up front (trace, tests, compiler checks)."""
        walk = self.walk(address)
        try:
            question = next(walk)
            while True:
                if isinstance(question, NeedHostname):
                    answer: Answer = hostname
                else:
                    answer = dnslisted(question.zone, question.pattern)
                question = walk.send(answer)
        except StopIteration as stop:
            decision: Decision = stop.value
            return decision

    async def decide_async(self, address: str, resolver: Resolver) -> Decision:
        """Decision for a live connection: DNS is asked only when a row needs it."""
        walk = self.walk(address)
        try:
            question = next(walk)
            while True:
                if isinstance(question, NeedHostname):
                    answer: Answer = await resolver.verified_hostname(address)
                else:
                    answer = await resolver.dnslisted(address, question.zone, question.pattern)
                question = walk.send(answer)
        except StopIteration as stop:
            final: Decision = stop.value
            return final


def build_groups(policy: Policy) -> dict[str, GroupIndex]:
    """Index every sender group once; listeners sharing a group share its index."""
    groups = {name: GroupIndex(name, entries) for name, entries in policy.sender_groups.items()}
    groups["ALL"] = GroupIndex("ALL", [AllEntry()])
    return groups


def build_hat_indexes(policy: Policy) -> dict[str, HatIndex]:
    groups = build_groups(policy)
    return {listener.name: HatIndex(policy, listener, groups) for listener in policy.listeners}
