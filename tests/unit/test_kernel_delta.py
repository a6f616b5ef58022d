"""List-against-list deltas (the fast path for one-address updates) agree with set arithmetic."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from netpolicy.kernel.delta import CHUNK, sorted_delta, split_hosts
from netpolicy.model.intervals import Interval, merge, versioned


def as_plan_list(networks: set[ipaddress.IPv4Network]) -> tuple[Interval, ...]:
    """What the compiler emits: sorted ranges, touching ones merged."""
    return versioned(4, merge((int(n[0]), int(n[-1])) for n in networks))


def ivs(*cidrs: str) -> tuple[Interval, ...]:
    return tuple(map(Interval.from_cidr, cidrs))


networks = st.sets(
    st.builds(lambda a, p: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False),
              st.integers(0xC0000000, 0xC00003FF), st.integers(22, 32)),
    max_size=40,
)


@given(networks, networks)
def test_sorted_delta_matches_set_difference(old: set[ipaddress.IPv4Network], new: set[ipaddress.IPv4Network]) -> None:
    a, b = as_plan_list(old), as_plan_list(new)
    found = sorted_delta(a, b)
    assert found is not None
    added, removed = found
    assert set(added) == set(b) - set(a)
    assert set(removed) == set(a) - set(b)


def test_sorted_delta_skips_long_equal_stretches_and_finds_one_change() -> None:
    base = ivs(*(f"10.{i >> 7}.{2 * (i & 127)}.0/24" for i in range(5 * CHUNK)))  # not touching
    changed = base[:3000] + ivs("10.23.112.7/32") + base[3001:]
    assert sorted_delta(base, changed) == (list(ivs("10.23.112.7/32")), list(ivs("10.23.112.0/24")))
    assert sorted_delta(base, base + ivs("192.0.2.0/24")) == (list(ivs("192.0.2.0/24")), [])
    assert sorted_delta(base, base) == ([], [])
    grown = base[:10] + (Interval(4, base[10].first, base[10].last + 1),) + base[11:]
    assert sorted_delta(base, grown) == ([grown[10]], [base[10]])  # same start, other end


def test_sorted_delta_gives_up_on_unsorted_lists() -> None:
    assert sorted_delta(ivs("10.0.0.2/32", "10.0.0.1/32"), ivs("10.0.0.3/32", "10.0.0.1/32")) is None


def test_split_hosts_separates_single_addresses() -> None:
    ranges = (*ivs("192.0.2.7/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:bad::/48", "0.0.0.0/0"), Interval(4, 10, 20))
    hosts, nets = split_hosts(ranges)
    assert hosts == set(ivs("192.0.2.7/32", "2001:db8::1/128"))
    assert nets == {*ivs("198.51.100.0/24", "2001:db8:bad::/48", "0.0.0.0/0"), Interval(4, 10, 20)}
