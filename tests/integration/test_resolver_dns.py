"""The real DnsResolver against a real DNS server (tests/support/dns_server.py) on loopback.

Forward-confirmed reverse DNS (several PTR names, a forward that does not match, IPv6, CNAME
chains, NXDOMAIN, SERVFAIL, a server that never answers), the TTLs the cache honours (counted as
queries the server received) and the reputation score from several lists asked at once.
"""

from __future__ import annotations

import asyncio
import sys
import time

from netpolicy.model.policy import Reputation, ReputationSource
from tests.support.dns_server import DnsServer, Record, Zone, dnslist_name, resolv_conf, reverse_name
from tests.support.netns import NetPair

V4, V6 = "192.0.2.10", "2001:db8::25"
REVERSE_V4, REVERSE_V6 = "2.0.192.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"
FORWARD = "example.test"


def forward(*records: Record) -> Zone:
    return Zone(FORWARD, records, negative_ttl=30)


def ptr(address: str, *names: str, ttl: int = 300) -> list[Record]:
    return [Record(reverse_name(address), "PTR", f"{name}.", ttl) for name in names]


def elapsed_of(started: float) -> float:
    return time.monotonic() - started


async def test_the_second_ptr_name_confirms_and_the_fact_holds_for_the_shortest_ttl(dns_server: DnsServer) -> None:
    dns_server.load(
        Zone(REVERSE_V4, ptr(V4, "other.example.test", "mx.example.test", ttl=200)),
        forward(Record("other.example.test", "A", "192.0.2.99", 100), Record("mx.example.test", "A", V4, 150)),
    )
    fact = await dns_server.resolver().verified_hostname(V4)
    assert (fact.value, fact.ttl) == ("mx.example.test", 100.0)


async def test_a_forward_that_does_not_give_the_address_back_is_no_name(dns_server: DnsServer) -> None:
    dns_server.load(
        Zone(REVERSE_V4, ptr(V4, "liar.example.test")),
        forward(Record("liar.example.test", "A", "192.0.2.11", 120), Record("liar.example.test", "AAAA", "2001:db8::10")),
    )
    resolver = dns_server.resolver()
    fact = await resolver.verified_hostname(V4)
    assert (fact.value, fact.ttl) == (None, 120.0)
    assert (await resolver.verified_hostname(V4)).value is None
    assert dns_server.queries("liar.example.test") == 1  # a real negative result is cached


async def test_only_the_first_five_ptr_names_are_checked(dns_server: DnsServer) -> None:
    names = [f"n{i}.example.test" for i in range(6)]
    dns_server.load(
        Zone(REVERSE_V4, ptr(V4, *names)),
        forward(*(Record(name, "A", V4 if name == "n5.example.test" else "192.0.2.99") for name in names)),
    )
    assert (await dns_server.resolver().verified_hostname(V4)).value is None
    assert [dns_server.queries(name) for name in names] == [1, 1, 1, 1, 1, 0]


async def test_ipv6_ptr_is_confirmed_by_aaaa_only(dns_server: DnsServer) -> None:
    other = "2001:db8::26"
    dns_server.load(
        Zone(REVERSE_V6, [*ptr(V6, "mx6.example.test"), *ptr(other, "v4only.example.test")]),
        forward(Record("mx6.example.test", "AAAA", V6), Record("v4only.example.test", "A", "192.0.2.26")),
    )
    resolver = dns_server.resolver()
    assert (await resolver.verified_hostname(V6)).value == "mx6.example.test"
    fact = await resolver.verified_hostname(other)
    assert (fact.value, fact.ttl) == (None, 30.0)  # no AAAA: an empty answer held for the SOA minimum


async def test_a_cname_chain_on_the_forward_name_confirms_and_its_ttls_count(dns_server: DnsServer) -> None:
    dns_server.load(
        Zone(REVERSE_V4, ptr(V4, "alias.example.test")),
        forward(
            Record("alias.example.test", "CNAME", "hop.example.test.", 250),
            Record("hop.example.test", "CNAME", "mx.example.test.", 7),
            Record("mx.example.test", "A", V4, 300),
        ),
    )
    fact = await dns_server.resolver().verified_hostname(V4)
    assert (fact.value, fact.ttl) == ("alias.example.test", 7.0)


async def test_a_ptr_delegated_through_a_cname_rfc_2317(dns_server: DnsServer) -> None:
    dns_server.load(
        Zone(REVERSE_V4, [Record(reverse_name(V4), "CNAME", f"10.0-63.{REVERSE_V4}.", 90)]),
        Zone(f"0-63.{REVERSE_V4}", [Record(f"10.0-63.{REVERSE_V4}", "PTR", "mx.example.test.", 300)]),
        forward(Record("mx.example.test", "A", V4, 300)),
    )
    fact = await dns_server.resolver().verified_hostname(V4)
    assert (fact.value, fact.ttl) == ("mx.example.test", 90.0)


async def test_nxdomain_is_a_negative_answer_held_for_the_soa_minimum(dns_server: DnsServer) -> None:
    dns_server.load(Zone(REVERSE_V4, ptr("192.0.2.200", "x.example.test"), negative_ttl=42))
    resolver = dns_server.resolver()
    fact = await resolver.verified_hostname(V4)
    assert (fact.value, fact.ttl) == (None, 42.0)
    await resolver.verified_hostname(V4)
    assert dns_server.queries(reverse_name(V4)) == 1


async def test_servfail_is_a_failed_lookup_never_cached(dns_server: DnsServer) -> None:
    dns_server.load(Zone(REVERSE_V4, ptr(V4, "mx.example.test")), forward(Record("mx.example.test", "A", V4)))
    dns_server.servfail(reverse_name(V4))
    resolver = dns_server.resolver()
    facts = [await resolver.verified_hostname(V4) for _ in range(2)]
    assert [(f.value, f.ttl) for f in facts] == [(None, 0.0), (None, 0.0)]
    assert dns_server.queries(reverse_name(V4)) == 2


async def test_a_failed_forward_lookup_makes_the_name_a_fact_of_no_duration(dns_server: DnsServer) -> None:
    dns_server.load(Zone(REVERSE_V4, ptr(V4, "mx.example.test")), forward(Record("mx.example.test", "A", V4)))
    dns_server.servfail("mx.example.test")
    fact = await dns_server.resolver().verified_hostname(V4)
    assert (fact.value, fact.ttl) == (None, 0.0)


async def test_a_server_that_never_answers_costs_the_timeout_and_no_more(dns_server: DnsServer) -> None:
    dns_server.load(Zone(REVERSE_V4, ptr(V4, "mx.example.test")))
    dns_server.drop(reverse_name(V4))
    started = time.monotonic()
    fact = await dns_server.resolver(timeout=0.5).verified_hostname(V4)
    elapsed = elapsed_of(started)
    assert (fact.value, fact.ttl) == (None, 0.0)
    assert 0.45 < elapsed < 0.9, elapsed


async def test_forward_lookups_of_a_ptr_set_go_out_together(dns_server: DnsServer) -> None:
    names = [f"slow{i}.example.test" for i in range(3)]
    dns_server.load(Zone(REVERSE_V4, ptr(V4, *names)),
                    forward(*(Record(name, "A", V4 if name == names[-1] else "192.0.2.99") for name in names)))
    dns_server.delay(0.4, *names)  # a slow forward zone is the behaviour under test
    started = time.monotonic()
    assert (await dns_server.resolver().verified_hostname(V4)).value == names[-1]
    assert elapsed_of(started) < 0.75  # one round trip of 0.4 s, not three


async def test_answers_are_cached_for_their_ttl_and_asked_again_after_it(dns_server: DnsServer) -> None:
    zone, listed, unlisted = "bl.test", "192.0.2.1", "192.0.2.2"
    dns_server.load(Zone(zone, [Record(dnslist_name(listed, zone), "A", "127.0.0.2", 1)], negative_ttl=1))
    resolver = dns_server.resolver()
    pattern = ReputationSource(dnslist=zone, weight=-1).pattern
    first = [await resolver.dnslisted(address, zone, pattern) for address in (listed, unlisted)]
    again = [await resolver.dnslisted(address, zone, pattern) for address in (listed, unlisted)]
    assert [(f.value, f.ttl) for f in first] == [(True, 1.0), (False, 1.0)]
    assert [f.value for f in again] == [True, False] and all(0 < f.ttl < 1.0 for f in again)
    counts = [dns_server.queries(dnslist_name(address, zone)) for address in (listed, unlisted)]
    assert counts == [1, 1]
    await asyncio.sleep(1.05)  # the TTL running out is the behaviour under test
    assert [(await resolver.dnslisted(address, zone, pattern)).value for address in (listed, unlisted)] == [True, False]
    assert [dns_server.queries(dnslist_name(address, zone)) for address in (listed, unlisted)] == [2, 2]


async def test_connections_at_once_from_one_host_share_each_question(dns_server: DnsServer) -> None:
    zones = ["bl1.test", "bl2.test"]
    lists(dns_server, V4, dict.fromkeys(zones, "127.0.0.2"))
    dns_server.delay(0.3, *(dnslist_name(V4, zone) for zone in zones))  # answers still out while all ask
    resolver = dns_server.resolver()
    rep = reputation(*((zone, -2.0, None) for zone in zones))
    facts = await asyncio.gather(*(resolver.score(V4, rep) for _ in range(10)))
    assert {fact.value for fact in facts} == {-4.0}
    assert [dns_server.queries(dnslist_name(V4, zone)) for zone in zones] == [1, 1]


async def test_a_question_left_by_a_timed_out_score_serves_the_next_connection(dns_server: DnsServer) -> None:
    lists(dns_server, V4, {"late.test": "127.0.0.2"})
    dns_server.delay(0.4, dnslist_name(V4, "late.test"))  # answers after the score gave up: the behaviour under test
    resolver = dns_server.resolver(timeout=2.0)
    assert (await resolver.score(V4, reputation(("late.test", -5.0, None), timeout=0.2))).value is None
    assert (await resolver.score(V4, reputation(("late.test", -5.0, None), timeout=1.0))).value == -5.0
    assert dns_server.queries(dnslist_name(V4, "late.test")) == 1


def test_without_a_name_server_in_resolv_conf_the_local_host_is_asked(netpair: NetPair) -> None:
    """As glibc does: serve on a host whose resolv.conf names no server asks 127.0.0.1:53."""
    ns = netpair.server
    lookup = ("import asyncio; from netpolicy.smtp.resolver import DnsResolver; "
              f"print(asyncio.run(DnsResolver(timeout=2.0).verified_hostname({V4!r})).value)")
    with DnsServer("127.0.0.1", 53, netns=ns) as server, resolv_conf(ns):
        server.load(Zone(REVERSE_V4, ptr(V4, "mx.example.test")), forward(Record("mx.example.test", "A", V4)))
        assert ns.exec([sys.executable, "-c", lookup]).stdout.split() == ["mx.example.test"]


def lists(dns_server: DnsServer, address: str, answers: dict[str, str]) -> None:
    """Serve each zone of ``answers`` with that A answer for ``address``."""
    dns_server.load(*(Zone(zone, [Record(dnslist_name(address, zone), "A", answer, 60)]) for zone, answer in answers.items()))


def reputation(*sources: tuple[str, float, str | None], timeout: float = 2.0) -> Reputation:
    return Reputation(timeout=timeout, sources=[ReputationSource(dnslist=z, weight=w, answers=a) for z, w, a in sources])


async def test_score_sources_are_asked_at_once(dns_server: DnsServer) -> None:
    zones = ["bl1.test", "bl2.test", "bl3.test"]
    lists(dns_server, V4, dict.fromkeys(zones, "127.0.0.2"))
    dns_server.delay(0.5, *(dnslist_name(V4, zone) for zone in zones))  # three slow lists: the behaviour under test
    resolver, rep = dns_server.resolver(), reputation(*((zone, -2.0, None) for zone in zones))
    started = time.monotonic()
    fact = await resolver.score(V4, rep)
    elapsed = elapsed_of(started)
    assert (fact.value, fact.ttl) == (-6.0, 60.0)
    assert 0.5 <= elapsed < 1.2, elapsed  # the slowest lookup, not the sum (1.5 s)
    started = time.monotonic()
    again = await resolver.score(V4, rep)
    assert again.value == -6.0 and 58.0 < again.ttl < 60.0
    assert elapsed_of(started) < 0.1  # from the cache
    assert [dns_server.queries(dnslist_name(V4, zone)) for zone in zones] == [1, 1, 1]


async def test_a_list_that_never_answers_leaves_the_others_score(dns_server: DnsServer) -> None:
    lists(dns_server, V4, {"bl1.test": "127.0.0.2", "bl2.test": "127.0.0.2", "mute.test": "127.0.0.2"})
    dns_server.drop(dnslist_name(V4, "mute.test"))
    rep = reputation(("bl1.test", -2.0, None), ("bl2.test", -3.0, None), ("mute.test", -4.0, None), timeout=0.6)
    started = time.monotonic()
    fact = await dns_server.resolver().score(V4, rep)
    elapsed = elapsed_of(started)
    assert (fact.value, fact.ttl) == (-5.0, 0.0)  # held for 0 s: it rests on a failed lookup
    assert 0.55 < elapsed < 1.0, elapsed


async def test_every_list_failing_is_no_score(dns_server: DnsServer) -> None:
    lists(dns_server, V4, {"bl1.test": "127.0.0.2", "bl2.test": "127.0.0.2"})
    dns_server.servfail(dnslist_name(V4, "bl1.test"))
    dns_server.drop(dnslist_name(V4, "bl2.test"))
    fact = await dns_server.resolver().score(V4, reputation(("bl1.test", -2.0, None), ("bl2.test", -3.0, None), timeout=0.5))
    assert (fact.value, fact.ttl) == (None, 0.0)


async def test_weights_are_summed_and_clamped_and_a_whitelist_adds(dns_server: DnsServer) -> None:
    everywhere, whitelisted, both, nowhere = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"
    listings = {
        "zen.test": {everywhere: "127.0.0.4"},
        "spamcop.test": {everywhere: "127.0.0.2", both: "127.0.0.2"},
        "barracuda.test": {everywhere: "127.0.0.2"},
        "dnswl.test": {whitelisted: "127.0.10.2", both: "127.0.10.3"},
    }
    dns_server.load(*(Zone(zone, [Record(dnslist_name(a, zone), "A", answer) for a, answer in hosts.items()])
                      for zone, hosts in listings.items()))
    rep = reputation(("zen.test", -6.0, "127.0.0.[2..11]"), ("spamcop.test", -3.0, None),
                     ("barracuda.test", -4.0, None), ("dnswl.test", 4.0, "127.0.[0..255].[1..3]"))
    resolver = dns_server.resolver()
    scores = [(await resolver.score(address, rep)).value for address in (everywhere, whitelisted, both, nowhere)]
    assert scores == [-10.0, 4.0, 1.0, 0.0]  # -13 clamped to -10; +4; -3 + 4; nobody lists it


async def test_an_answer_outside_the_pattern_does_not_count(dns_server: DnsServer) -> None:
    lists(dns_server, V4, {"zen.test": "127.255.255.254", "bl2.test": "127.0.0.2"})
    rep = reputation(("zen.test", -6.0, "127.0.0.[2..11]"), ("bl2.test", -2.0, "127.0.0.3"))
    resolver = dns_server.resolver()
    assert (await resolver.score(V4, rep)).value == 0.0  # both answered, neither is a listing
    assert resolver.unexpected_answers == {("zen.test", "127.255.255.254"): 1, ("bl2.test", "127.0.0.2"): 1}


async def test_sources_weighting_parts_of_one_list_do_not_report_each_other(dns_server: DnsServer) -> None:
    sbl, pbl, error = "192.0.2.1", "192.0.2.2", "192.0.2.3"
    dns_server.load(Zone("zen.test", [Record(dnslist_name(a, "zen.test"), "A", answer)
                                      for a, answer in ((sbl, "127.0.0.2"), (pbl, "127.0.0.10"), (error, "127.255.255.254"))]))
    rep = reputation(("zen.test", -6.0, "127.0.0.[2..3]"), ("zen.test", -1.0, "127.0.0.[10..11]"))
    resolver = dns_server.resolver()
    assert [(await resolver.score(a, rep)).value for a in (sbl, pbl, error)] == [-6.0, -1.0, 0.0]
    assert resolver.unexpected_answers == {("zen.test", "127.255.255.254"): 1}
    assert dns_server.queries(dnslist_name(sbl, "zen.test")) == 1  # one lookup for both sources


async def test_ipv6_dns_list_lookups_use_nibbles(dns_server: DnsServer) -> None:
    lists(dns_server, V6, {"bl6.test": "127.0.0.2"})
    fact = await dns_server.resolver().score(V6, reputation(("bl6.test", -3.0, None)))
    assert fact.value == -3.0
    assert dns_server.queries(dnslist_name(V6, "bl6.test")) == 1


async def test_the_server_answers_long_txt_records_over_tcp(dns_server: DnsServer) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one 255-octet character-string
    dns_server.load(Zone("example.test", [Record("sel._domainkey.example.test", "TXT", key, 60)]))
    answer = await dns_server.stub().resolve("sel._domainkey.example.test.", "TXT", tcp=True)
    assert b"".join(answer.rrset[0].strings).decode() == key  # type: ignore[union-attr, attr-defined]
