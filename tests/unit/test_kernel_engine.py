"""The backend-neutral engine: when a cached set may stand for the kernel, and deltas."""

from __future__ import annotations

from netpolicy.kernel.engine import DataplaneCache, SetRecord, element_delta
from netpolicy.kernel.values import Interval


def iv(cidr: str) -> Interval:
    return Interval.from_cidr(cidr)


def test_a_dataplane_with_generations_is_trusted_only_at_the_cached_one() -> None:
    cache = DataplaneCache(7, {"s": 2}, {"s": SetRecord(frozenset({iv("192.0.2.1/32"), iv("192.0.2.2/32")}))})
    assert cache.trusted("s", 2, 7) is cache.sets["s"]
    assert cache.trusted("s", 2, 8) is None  # same size, someone else's commit: read it
    cache.own_commit(7)  # a promotion of ours moves the generation by one
    assert cache.trusted("s", 2, 8) is cache.sets["s"]
    cache.own_commit(5)  # a commit from an older view does not make the cache current
    assert cache.generation == 8


def test_a_dataplane_without_generations_is_trusted_while_its_size_holds() -> None:
    cache = DataplaneCache(None, {"s": 1}, {"s": SetRecord(frozenset({iv("192.0.2.1/32")})), "big": SetRecord(None)})
    assert cache.trusted("s", 1, None) is cache.sets["s"]
    assert cache.trusted("s", 2, None) is None and cache.trusted("s", None, None) is None
    assert cache.trusted("big", None, None) is None and cache.trusted("other", 1, None) is None


def test_element_delta_list_against_list_or_by_elements() -> None:
    old = ("192.0.2.1/32", "198.51.100.0/24")
    new = ("192.0.2.1/32", "192.0.2.9/32", "198.51.100.0/24")
    held = frozenset(map(iv, old))
    by_list = element_delta(SetRecord(held, old), new, lambda: frozenset())  # wanted() is not needed
    assert by_list == (frozenset({iv("192.0.2.9/32")}), frozenset())
    by_elements = element_delta(SetRecord(held | {iv("10.0.0.0/8")}), new, lambda: frozenset(map(iv, new)))
    assert by_elements == (frozenset({iv("192.0.2.9/32")}), frozenset({iv("10.0.0.0/8")}))
    assert element_delta(None, new, lambda: frozenset()) is None
    assert element_delta(SetRecord(None), new, lambda: frozenset()) is None
