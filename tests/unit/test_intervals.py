"""Interval arithmetic shared by the HAT index, the compiler and the kernel layer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.model import intervals
from netpolicy.model.intervals import LabelledIndex, intersecting, merge, sorted_in_steps, subtract, union

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


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3)), max_size=60), st.integers(1, 8))
def test_sorted_in_steps_is_a_stable_sort(items: list[tuple[int, int]], step: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(intervals, "_STEP", step)
        assert sorted_in_steps(items, itemgetter(0)) == sorted(items, key=itemgetter(0))


@contextmanager
def largest_sort(step: int) -> Iterator[list[int]]:
    """The length of every list ``intervals`` hands to ``sorted``, with ``_STEP`` set to ``step``."""
    lengths: list[int] = []

    def counting_sorted(items: Any, **kwargs: Any) -> list[Any]:
        items = list(items)
        lengths.append(len(items))
        return sorted(items, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(intervals, "_STEP", step)
        mp.setattr(intervals, "sorted", counting_sorted, raising=False)
        yield lengths


def test_big_sorts_go_in_steps_that_each_hold_the_interpreter_lock_briefly() -> None:
    """A reload prepares its policy in a worker thread; one ``sorted`` call over all the
    entries would hold the GIL, and stall serve's event loop, for its whole length."""
    rng = random.Random(7)
    spans = [(a, a + rng.choice((0, 0, 3, 255))) for a in (rng.randrange(1 << 32) for _ in range(20_000))]
    with largest_sort(500) as lengths:
        merged = merge(spans)
        LabelledIndex.build([*spans, (0, 1 << 31)])  # overlapping entries: the boundary sweep sorts too
    assert max(lengths) <= 500
    assert merged == merge(sorted(spans)) and union(merged[::2], merged[1::2]) == merged


def test_lopsided_union_and_subtract_match_brute_force() -> None:
    """One side 16 times the other or more takes the bisecting path (``_absorb``, ``_carve``):
    several holes inside one long interval, small intervals bridged by long ones."""
    def addresses(spans: list[tuple[int, int]]) -> set[int]:
        return {a for s, e in spans for a in range(s, e + 1)}

    def spans(rng: random.Random, n: int, widest: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            start = rng.randrange(50_000)
            out.append((start, start + rng.choice((0, 1, 3, rng.randrange(widest)))))
        return merge(out)

    rng = random.Random(12)
    checked = 0
    for _ in range(400):
        big = spans(rng, 300, 600)
        # the few: around one long interval of ``big`` (several cutting it, or bridging to its
        # neighbours), and anywhere
        long = max(rng.sample(big, 10), key=lambda span: span[1] - span[0])
        near = [(lo, lo + rng.randrange(40)) for lo in (rng.randrange(long[0] - 50, long[1] + 50) for _ in range(3))]
        small = merge(near + spans(rng, 2, 300))
        if len(small) * intervals._LOPSIDED >= len(big):
            continue
        for got in (union(big, small), union(small, big), subtract(big, small)):
            assert all(got[i][1] + 1 < got[i + 1][0] for i in range(len(got) - 1))  # sorted, disjoint, not touching
        assert union(big, small) == merge(big + small) == union(small, big)
        assert addresses(subtract(big, small)) == addresses(big) - addresses(small)
        checked += 1
    assert checked > 300


@given(st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 2**20)), max_size=40), st.booleans())
def test_an_index_of_disjoint_intervals_answers_as_one_built_by_sweeping(pairs: list[tuple[int, int]], v4: bool) -> None:
    top = 2**32 - 1 if v4 else 2**128 - 1
    intervals = merge([(min(a, top), min(a + n, top)) for a, n in pairs])
    direct, built = LabelledIndex.of_disjoint(intervals), LabelledIndex.build(intervals)
    probes = {v for a, b in intervals for v in (a - 1, a, b, b + 1) if 0 <= v <= top} | {0, top}
    for value in probes:
        assert (direct.find(value) is None) == (built.find(value) is None), value
