"""Interval arithmetic shared by the HAT index, the compiler and the kernel layer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.model.intervals import intersecting, merge, subtract

span = st.tuples(st.integers(0, 63), st.integers(0, 63)).map(lambda t: (min(t), max(t)))


@settings(max_examples=300)
@given(st.lists(span, max_size=8), st.lists(span, max_size=8))
def test_intersecting_matches_brute_force(candidates: list[tuple[int, int]], others: list[tuple[int, int]]) -> None:
    covered = {a for s, e in others for a in range(s, e + 1)}
    expected = [c for c in candidates if any(a in covered for a in range(c[0], c[1] + 1))]
    assert intersecting(candidates, others) == expected


@settings(max_examples=300)
@given(st.lists(span, max_size=8), st.lists(span, max_size=8))
def test_merge_and_subtract_match_brute_force(base: list[tuple[int, int]], holes: list[tuple[int, int]]) -> None:
    def addresses(spans: list[tuple[int, int]]) -> set[int]:
        return {a for s, e in spans for a in range(s, e + 1)}

    merged = merge(base)
    assert addresses(merged) == addresses(base)
    assert all(merged[i][1] + 1 < merged[i + 1][0] for i in range(len(merged) - 1))  # disjoint, not touching
    assert addresses(subtract(merged, merge(holes))) == addresses(base) - addresses(holes)
