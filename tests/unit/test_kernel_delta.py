"""List-against-list deltas (the fast path for one-address updates) agree with set arithmetic."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from netpolicy.kernel.delta import CHUNK, sorted_delta, split_hosts
from netpolicy.kernel.values import Interval


def as_plan_list(networks: set[ipaddress.IPv4Network]) -> tuple[str, ...]:
    """What the compiler emits: collapsed, numerically sorted CIDR strings."""
    return tuple(str(n) for n in ipaddress.collapse_addresses(networks))


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
    base = tuple(f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(5 * CHUNK))
    changed = base[:3000] + ("10.11.184.7/32",) + base[3001:]
    assert sorted_delta(base, changed) == (["10.11.184.7/32"], [base[3000]])
    assert sorted_delta(base, base + ("192.0.2.0/24",)) == (["192.0.2.0/24"], [])
    assert sorted_delta(base, base) == ([], [])


def test_sorted_delta_gives_up_on_unsorted_lists() -> None:
    assert sorted_delta(("10.0.0.2/32", "10.0.0.1/32"), ("10.0.0.3/32", "10.0.0.1/32")) is None


def test_split_hosts_separates_single_addresses() -> None:
    hosts, nets = split_hosts(("192.0.2.7/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:bad::/48", "0.0.0.0/0"))
    assert hosts == {Interval.from_cidr("192.0.2.7/32"), Interval.from_cidr("2001:db8::1/128")}
    assert nets == {Interval.from_cidr(c) for c in ("198.51.100.0/24", "2001:db8:bad::/48", "0.0.0.0/0")}
