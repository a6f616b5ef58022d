"""Asynchronous DNS for the HAT: forward-confirmed reverse DNS and DNS-list lookups.

Every lookup is bounded by a timeout (a slow resolver must not hold a connection before its
banner) and cached (a busy sender connects many times a minute). A failed or timed-out lookup
is "no name" / "not listed": SPEC.md says the host is then matched by address alone.

A DNS list's answers are fetched once per (address, zone) and judged by each entry's pattern.
An answer the pattern does not match is not a listing: Spamhaus answers 127.255.255.254 to a
query through a public resolver, and taking that for a listing would refuse every sender. Such an
answer is logged once per (zone, answer), so a misconfigured resolver shows in the log without
flooding it, and counted per lookup for the metrics.

A fact holds for its DNS TTL: the smallest TTL along a CNAME chain for an answer, the SOA's TTL
and minimum for a negative one (RFC 2308), as a recursive resolver would cache them; a negative
answer is held one hour at most, like unbound's cache-max-negative-ttl, so a zone whose SOA says
a day does not keep a new listing unseen for a day. A failed lookup holds for 0 s and is not
cached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.resolver
import dns.reversename

from netpolicy.model.entries import AnswerPattern
from netpolicy.model.hat import Fact
from netpolicy.model.policy import Reputation
from netpolicy.model.reputation import reputation_score

log = logging.getLogger(__name__)
_MAX_NEGATIVE_TTL = 3600.0
# A PTR set can be long; a host name in the HAT is checked against the first few only.
_MAX_PTR_NAMES = 5


class TtlCache:
    """A small LRU whose entries expire; bounded so a scan of many addresses cannot grow it."""

    def __init__(self, size: int = 65536) -> None:
        self._data: OrderedDict[tuple[str, ...], tuple[float, object]] = OrderedDict()
        self._size = size

    def get(self, key: tuple[str, ...]) -> tuple[bool, object, float]:
        """(hit, value, seconds left)."""
        item = self._data.get(key)
        now = time.monotonic()
        if item is None or item[0] < now:
            return False, None, 0.0
        self._data.move_to_end(key)
        return True, item[1], item[0] - now

    def put(self, key: tuple[str, ...], value: object, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds; a TTL of 0 (a failed lookup) keeps nothing."""
        if ttl <= 0:
            return
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)


class DnsResolver:
    """dnspython-backed implementation of ``netpolicy.model.hat.Resolver``."""

    def __init__(self, timeout: float = 3.0, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.timeout = timeout
        self._resolver = resolver or _system_resolver()
        self._resolver.lifetime = timeout
        self._cache = TtlCache()
        self._asking: dict[tuple[str, str], asyncio.Task[tuple[list[str] | None, float]]] = {}
        self.unexpected_answers: dict[tuple[str, str], int] = {}  # (zone, answer) -> lookups that met it

    async def _query(self, name: str, rdtype: str) -> tuple[list[str] | None, float]:
        """One question asked once however many connections wait for it: a host that opens ten
        connections at once costs one query per name, not ten. A caller that stops waiting (a
        score past its timeout) leaves the question to the others (``shield``)."""
        key = (name, rdtype)
        task = self._asking.get(key)
        if task is None:
            task = self._asking[key] = asyncio.ensure_future(self._ask(name, rdtype))
            task.add_done_callback(lambda _: self._asking.pop(key, None))
        return await asyncio.shield(task)

    async def _ask(self, name: str, rdtype: str) -> tuple[list[str] | None, float]:
        """Answer texts and TTL; an empty list for NXDOMAIN or no answer, None (TTL 0) for a
        timeout or failure, which must not be cached or learned as long as a real answer."""
        try:
            answer = await asyncio.wait_for(self._resolver.resolve(name, rdtype), self.timeout)
        except dns.resolver.NXDOMAIN as nxdomain:
            return [], _negative_ttl(nxdomain.responses().values())  # type: ignore[no-untyped-call]  # dnspython leaves it unannotated
        except dns.resolver.NoAnswer as empty:
            return [], _negative_ttl([empty.response()])  # type: ignore[no-untyped-call]
        except (dns.exception.DNSException, asyncio.TimeoutError, OSError):
            return None, 0.0
        return [r.to_text() for r in answer], float(answer.chaining_result.minimum_ttl)

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        """The first PTR name (of at most five) whose forward lookup gives the address back.
        The forward lookups go out together, so a PTR set costs one round trip, not one each.
        The fact holds for the smallest TTL of the answers it rests on; when a forward lookup
        failed, for 0 s: that name might have been the confirming one."""
        hit, cached, left = self._cache.get(("ptr", address))
        if hit:
            return Fact(cached, left)  # type: ignore[arg-type]
        names, ttl = await self._query(dns.reversename.from_address(address).to_text(), "PTR")
        candidates = (names or [])[:_MAX_PTR_NAMES]
        rdtype = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
        forwards = await asyncio.gather(*(self._query(name, rdtype) for name in candidates))
        wanted = ipaddress.ip_address(address)
        verified: str | None = None
        for name, (forward, forward_ttl) in zip(candidates, forwards, strict=True):
            ttl = min(ttl, forward_ttl)
            if any(ipaddress.ip_address(a) == wanted for a in forward or ()):
                verified = name.rstrip(".").lower()
                break
        self._cache.put(("ptr", address), verified, ttl)
        return Fact(verified, ttl)

    async def _dnslist_answers(self, address: str, zone: str) -> tuple[list[str] | None, float]:
        """The A answers of ``zone`` for ``address``, fetched once per TTL whatever the patterns;
        None when the lookup failed."""
        hit, cached, left = self._cache.get(("dnsl", address, zone))
        if hit:
            return cached, left  # type: ignore[return-value]
        reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        owner = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
        records, ttl = await self._query(f"{owner}.{zone}.", "A")
        self._cache.put(("dnsl", address, zone), records, ttl)
        return records, ttl

    def _note_unexpected(self, zone: str, answers: list[str], patterns: list[AnswerPattern]) -> None:
        """Answers none of the zone's patterns take for a listing: logged once per (zone,
        answer), counted per lookup. All the patterns a score asks of one zone are weighed
        together, so sources weighting parts of one list (Spamhaus SBL, XBL, PBL) do not
        report each other's answers."""
        if any(pattern.matches(answer) for pattern in patterns for answer in answers):
            return
        for answer in answers:
            key = (zone, answer)
            if key not in self.unexpected_answers:
                log.warning("DNS list %s answered %s: not a listing", zone, answer)
            self.unexpected_answers[key] = self.unexpected_answers.get(key, 0) + 1

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> Fact[bool]:
        answers, ttl = await self._dnslist_answers(address, zone)
        if answers is None:
            return Fact(False, ttl)
        self._note_unexpected(zone, answers, [pattern])
        return Fact(any(pattern.matches(answer) for answer in answers), ttl)

    async def score(self, address: str, reputation: Reputation) -> Fact[float | None]:
        """Every source asked at once, all under ``reputation.timeout``: the connection waits
        for the slowest lookup, never for their sum. A source still unanswered then has failed.
        Answers in the cache are taken without a task each (a host in no list connecting again
        within the TTL, 3 sources: 45 -> 6 us CPU a connection)."""
        answers: dict[str, list[str] | None] = {}
        ttl = float("inf")
        tasks: dict[str, asyncio.Task[tuple[list[str] | None, float]]] = {}
        for zone in dict.fromkeys(source.dnslist for source in reputation.sources):
            hit, cached, left = self._cache.get(("dnsl", address, zone))
            if hit:
                answers[zone], ttl = cached, min(ttl, left)  # type: ignore[assignment]
            else:
                tasks[zone] = asyncio.ensure_future(self._dnslist_answers(address, zone))
        if tasks:
            await asyncio.wait(tasks.values(), timeout=reputation.timeout)
        for zone, task in tasks.items():
            if task.done() and not task.cancelled() and task.exception() is None:
                answers[zone], zone_ttl = task.result()
            else:
                task.cancel()
                answers[zone], zone_ttl = None, 0.0
            ttl = min(ttl, zone_ttl)

        for zone, found in answers.items():
            if found:  # most hosts are in no list: nothing to weigh
                self._note_unexpected(zone, found, [s.pattern for s in reputation.sources if s.dnslist == zone])

        def listed(zone: str, pattern: AnswerPattern) -> bool | None:
            found = answers[zone]
            return None if found is None else any(pattern.matches(answer) for answer in found)

        return Fact(reputation_score(reputation, listed), ttl)


def _system_resolver() -> dns.asyncresolver.Resolver:
    """The system's resolver configuration (/etc/resolv.conf). Without a name server there, the
    local host's, as glibc's resolver and so Postfix do, rather than no serve at all."""
    try:
        return dns.asyncresolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        log.warning("/etc/resolv.conf names no name server: asking 127.0.0.1")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        return resolver


def _negative_ttl(responses: Iterable[dns.message.Message]) -> float:
    """How long a negative answer holds: its SOA's TTL and minimum (dnspython's chaining result
    computes it, 300 s without an SOA), at most ``_MAX_NEGATIVE_TTL``."""
    ttls = [r.resolve_chaining().minimum_ttl for r in responses if isinstance(r, dns.message.QueryMessage)]
    return float(min([*ttls, _MAX_NEGATIVE_TTL]))
