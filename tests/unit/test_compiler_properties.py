"""Property tests: the kernel never refuses a host that userland would let in.

For random HATs over a small address space (so random probes hit entries often):
- kernel-refused implies the userland decision is TCPREFUSE for every possible host name and
  every DNS-list outcome;
- for address-only HATs, kernel-refused and userland TCPREFUSE agree exactly.
"""

from __future__ import annotations

import itertools
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.model.compiler import compile_listener
from netpolicy.model.entries import address_to_int
from netpolicy.model.hat import build_hat_indexes
from netpolicy.model.policy import Policy
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


def symbolic_entry() -> st.SearchStrategy[str]:
    return st.sampled_from([*HOSTNAMES, *(f"dnslist[{z}]" for z in ZONES)])


def hat_strategy(symbolic: bool) -> st.SearchStrategy[tuple[list[tuple[str, str]], dict[str, list[str]], str]]:
    entry = st.one_of(address_entry(), symbolic_entry()) if symbolic else address_entry()

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[tuple[str, str]], dict[str, list[str]], str]:
        n = draw(st.integers(1, 5))
        groups = {f"G{i}": draw(st.lists(entry, min_size=1, max_size=4)) for i in range(n)}
        rows = [(g, draw(st.sampled_from(BEHAVIORS))) for g in groups]
        return rows, groups, draw(st.sampled_from(["accept", "tcprefuse", "reject"]))

    return build()


# Host names that exercise every host-name entry: none, an exact match, a subdomain, unrelated.
CANDIDATE_NAMES = [None, "mx.a.test", "x.b.test", "other.test"]
ZONE_OUTCOMES = [set(c) for r in range(len(ZONES) + 1) for c in itertools.combinations(ZONES, r)]


def _probe(policy: Policy, addresses: list[str]) -> list[tuple[str, bool, set[str]]]:
    listener = policy.listeners[0]
    compiled = compile_listener(policy, listener)
    hat = build_hat_indexes(policy)[listener.name]
    out = []
    for address in addresses:
        refused = compiled.refuses(*address_to_int(address))
        behaviours = {
            hat.decide(address, hostname=name, dnslisted=lambda z, pattern, listed=listed: z in listed).behavior
            for name in CANDIDATE_NAMES
            for listed in ZONE_OUTCOMES
        }
        out.append((address, refused, behaviours))
    return out


@settings(max_examples=300, deadline=None)
@given(hat_strategy(symbolic=True), st.lists(st.one_of(v4_host, v6_host), min_size=1, max_size=8))
def test_kernel_refusal_implies_tcprefuse_under_any_dns(hat: tuple, addresses: list[str]) -> None:  # type: ignore[type-arg]
    rows, groups, all_behavior = hat
    policy = make_policy(rows, groups, all_behavior=all_behavior)
    for address, refused, behaviours in _probe(policy, addresses):
        if refused:
            assert behaviours == {"tcprefuse"}, (address, behaviours)


@settings(max_examples=300, deadline=None)
@given(hat_strategy(symbolic=False), st.lists(st.one_of(v4_host, v6_host), min_size=1, max_size=8))
def test_address_only_hats_agree_exactly(hat: tuple, addresses: list[str]) -> None:  # type: ignore[type-arg]
    rows, groups, all_behavior = hat
    policy = make_policy(rows, groups, all_behavior=all_behavior)
    for address, refused, behaviours in _probe(policy, addresses):
        assert len(behaviours) == 1
        assert refused == (behaviours == {"tcprefuse"}), (address, behaviours)


def test_outside_the_probed_space_only_all_decides() -> None:
    """Sanity for the strategies: an address no entry names falls to ALL."""
    policy = make_policy([("G", "tcprefuse")], {"G": ["10.0.0.0/26"]}, all_behavior="accept")
    compiled = compile_listener(policy, policy.listeners[0])
    far = int.from_bytes(socket.inet_aton("10.0.1.1"), "big")
    assert not compiled.refuses(4, far)
