"""The backend-neutral engine: when a cached set may stand for the kernel, and deltas."""

from __future__ import annotations

from netpolicy.kernel.engine import DataplaneCache, SetRecord, element_delta
from netpolicy.model.intervals import Interval


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
    old = tuple(map(iv, ("192.0.2.1/32", "198.51.100.0/24")))
    new = tuple(map(iv, ("192.0.2.1/32", "192.0.2.9/32", "198.51.100.0/24")))
    held = frozenset(old)
    by_list = element_delta(SetRecord(held, old), new, lambda: frozenset())  # wanted() is not needed
    assert by_list == (frozenset({iv("192.0.2.9/32")}), frozenset())
    by_elements = element_delta(SetRecord(held | {iv("10.0.0.0/8")}), new, lambda: frozenset(new))
    assert by_elements == (frozenset({iv("192.0.2.9/32")}), frozenset({iv("10.0.0.0/8")}))
    assert element_delta(None, new, lambda: frozenset()) is None
    assert element_delta(SetRecord(None), new, lambda: frozenset()) is None


def test_a_range_replaced_by_a_longer_one_keeps_the_stored_blocks_they_share() -> None:
    """A hash:net set stores ranges as CIDR blocks: 10.0.0.0-5 -> 10.0.0.0-6 adds one block and
    removes none (adding and removing the shared /30 and /31 would drop them from the set)."""
    old, new = (Interval(4, 0x0A000000, 0x0A000005),), (Interval(4, 0x0A000000, 0x0A000006),)
    stored = frozenset(old[0].blocks())
    found = element_delta(SetRecord(stored, old), new, lambda: frozenset(), lambda ivs: frozenset(b for i in ivs for b in i.blocks()))
    assert found == (frozenset({iv("10.0.0.6/32")}), frozenset())
