"""Property tests: the kernel never refuses a host that userland would let in.

For random HATs over a small address space (so random probes hit entries often), with address,
host-name, DNS-list and score entries, ``file:`` lists (read by the list parser) and
``country[...]`` entries (from a small MaxMind DB):
- kernel-refused implies the userland decision is TCPREFUSE for every possible host name and
  every DNS-list outcome (listed, not listed, lookup failed), hence every score they make;
- for HATs of addresses, lists and countries only, kernel-refused and userland TCPREFUSE agree
  exactly.
"""

from __future__ import annotations

import itertools
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.model.compiler import compile_listener
from netpolicy.model.entries import AddressSetEntry, Entry, address_to_int
from netpolicy.model.geoip import CountryTable, read_table
from netpolicy.model.hat import build_hat_indexes
from netpolicy.model.lists import parse_list
from netpolicy.model.policy import Policy, Reputation, ReputationSource
from tests.support.geoip import country_database
from tests.support.policies import make_policy

BEHAVIORS = ["accept", "reject", "tcprefuse", "relay", "continue"]
HOSTNAMES = ["mx.a.test", ".b.test"]
ZONES = ["z1.test", "z2.test"]

v4_host = st.integers(0, 63).map(lambda i: f"10.0.0.{i}")
v6_host = st.integers(0, 63).map(lambda i: f"2001:db8::{i:x}")


@st.composite
def address_entry(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "cidr", "range", "partial", "v6", "v6cidr"]))
    if kind == "host":
        return draw(v4_host)
    if kind == "cidr":
        plen = draw(st.integers(26, 32))
        base = draw(st.integers(0, 63)) >> (32 - plen) << (32 - plen)
        return f"10.0.0.{base}/{plen}"
    if kind == "range":
        a, b = sorted(draw(st.lists(st.integers(0, 63), min_size=2, max_size=2)))
        return f"10.0.0.{a}-{b}"
    if kind == "partial":
        return "10.0.0."
    if kind == "v6":
        return draw(v6_host)
    plen = draw(st.integers(122, 128))
    base = draw(st.integers(0, 63)) >> (128 - plen) << (128 - plen)
    return f"2001:db8::{base:x}/{plen}"


# Scores the two sources make: 0 (neither lists), -6, 4, -2 (both), None (both lookups failed).
SCORES = ["score[-10:-3]", "score[none]", "score[0:10]", "score[-2:-2]", "score[-10:0]"]
REPUTATION = Reputation(sources=[ReputationSource(dnslist=ZONES[0], weight=-6), ReputationSource(dnslist=ZONES[1], weight=4)])
# Countries over the probed space, with a gap (10.0.0.48/28) and a country with no ranges (DE).
COUNTRIES = {"CN": ["10.0.0.0/27", "2001:db8::/123"], "RU": ["10.0.0.32/28", "2001:db8::20/124"], "FR": ["10.0.0.62/31"]}
CODES = ["CN", "RU", "FR", "DE"]


def symbolic_entry() -> st.SearchStrategy[str]:
    return st.sampled_from([*HOSTNAMES, *(f"dnslist[{z}]" for z in ZONES), *SCORES])


def list_entry() -> st.SearchStrategy[str]:
    """A ``file:`` list as its lines; made an ``AddressSetEntry`` by the list parser in ``_policy``."""
    return st.lists(address_entry(), min_size=1, max_size=6).map(lambda lines: "file:" + "\n".join(lines))


def country_entry() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(CODES), min_size=1, max_size=2).map(lambda codes: f"country[{','.join(codes)}]")


def hat_strategy(symbolic: bool) -> st.SearchStrategy[tuple[list[tuple[str, str]], dict[str, list[str]], str]]:
    addresses = st.one_of(address_entry(), address_entry(), list_entry(), country_entry())
    entry = st.one_of(addresses, symbolic_entry()) if symbolic else addresses

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[tuple[str, str]], dict[str, list[str]], str]:
        n = draw(st.integers(1, 5))
        groups = {f"G{i}": draw(st.lists(entry, min_size=1, max_size=4)) for i in range(n)}
        rows = [(g, draw(st.sampled_from(BEHAVIORS))) for g in groups]
        return rows, groups, draw(st.sampled_from(["accept", "tcprefuse", "reject"]))

    return build()


# Host names that exercise every host-name entry: none, an exact match, a subdomain, unrelated.
CANDIDATE_NAMES = [None, "mx.a.test", "x.b.test", "other.test"]
# Each zone lists the host (True), does not (False), or its lookup failed (None).
ZONE_OUTCOMES = [dict(zip(ZONES, c, strict=True)) for c in itertools.product([True, False, None], repeat=len(ZONES))]


@pytest.fixture(scope="module")
def countries(tmp_path_factory: pytest.TempPathFactory) -> CountryTable:
    return read_table(str(country_database(tmp_path_factory.mktemp("geoip") / "country.mmdb", COUNTRIES)))


def _policy(hat: tuple, countries: CountryTable) -> Policy:  # type: ignore[type-arg]
    """The drawn HAT as a policy the loader could have made: lists parsed, countries resolved."""
    rows, groups, all_behavior = hat

    def resolved(text: str) -> str | Entry:
        if text.startswith("file:"):
            content = parse_list(text[5:].encode(), 100)
            assert not content.problems, content.problems
            return AddressSetEntry("file:list.txt", content.v4, content.v6, content.digest)
        if text.startswith("country["):
            return countries.entry(text, text[8:-1].split(","))
        return text

    policy = make_policy(rows, {g: [resolved(e) for e in entries] for g, entries in groups.items()}, all_behavior=all_behavior)
    return policy.model_copy(update={"reputation": REPUTATION})


def _probe(policy: Policy, addresses: list[str]) -> list[tuple[str, bool, set[str]]]:
    listener = policy.listeners[0]
    compiled = compile_listener(policy, listener)
    hat = build_hat_indexes(policy)[listener.name]
    out = []
    for address in addresses:
        refused = compiled.refuses(*address_to_int(address))
        behaviours = {
            hat.decide(address, hostname=name, dnslisted=lambda z, pattern, outcome=outcome: outcome[z]).behavior  # type: ignore[misc]
            for name in CANDIDATE_NAMES
            for outcome in ZONE_OUTCOMES
        }
        out.append((address, refused, behaviours))
    return out


@settings(max_examples=300, deadline=None)
@given(hat_strategy(symbolic=True), st.lists(st.one_of(v4_host, v6_host), min_size=1, max_size=8))
def test_kernel_refusal_implies_tcprefuse_under_any_dns(countries: CountryTable, hat: tuple, addresses: list[str]) -> None:  # type: ignore[type-arg]
    for address, refused, behaviours in _probe(_policy(hat, countries), addresses):
        if refused:
            assert behaviours == {"tcprefuse"}, (address, behaviours)


@settings(max_examples=300, deadline=None)
@given(hat_strategy(symbolic=False), st.lists(st.one_of(v4_host, v6_host), min_size=1, max_size=8))
def test_address_only_hats_agree_exactly(countries: CountryTable, hat: tuple, addresses: list[str]) -> None:  # type: ignore[type-arg]
    for address, refused, behaviours in _probe(_policy(hat, countries), addresses):
        assert len(behaviours) == 1
        assert refused == (behaviours == {"tcprefuse"}), (address, behaviours)


def test_outside_the_probed_space_only_all_decides() -> None:
    """Sanity for the strategies: an address no entry names falls to ALL."""
    policy = make_policy([("G", "tcprefuse")], {"G": ["10.0.0.0/26"]}, all_behavior="accept")
    compiled = compile_listener(policy, policy.listeners[0])
    far = int.from_bytes(socket.inet_aton("10.0.1.1"), "big")
    assert not compiled.refuses(4, far)
