"""nf_tables message encoding: elements round-trip through the kernel's interval form, rules
compare as the kernel dumps them, big batches are cut below netlink's 16-bit lengths."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from netpolicy.kernel import nfnl
from netpolicy.kernel import nftmsg as m
from netpolicy.model.intervals import Interval


def parse_elements(blob: bytes) -> list[m.Element]:
    out = []
    for _kind, raw in nfnl.iter_attrs(blob):
        e = nfnl.attrs(raw)
        key = nfnl.attrs(e[m.ELEM_KEY])[m.DATA_VALUE]
        out.append(m.Element(key, nfnl.get_be32(e, m.ELEM_FLAGS)))
    return out


@st.composite
def disjoint_intervals(draw: st.DrawFn) -> list[Interval]:
    """Non-overlapping IPv4 intervals, possibly adjacent, possibly reaching 255.255.255.255."""
    cuts = sorted(draw(st.sets(st.integers(0, (1 << 32) - 1), max_size=20)))
    out = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        out.append(Interval(4, a, b - 1 if draw(st.booleans()) and b > a else b))
    if draw(st.booleans()):
        out.append(Interval(4, (1 << 32) - 8, (1 << 32) - 1))
    return [iv for iv in out if iv.first <= iv.last and all(iv is o or iv.last < o.first or iv.first > o.last for o in out)]


@given(disjoint_intervals())
def test_interval_elements_round_trip(intervals: list[Interval]) -> None:
    blob = b"".join(m.interval_elements(intervals))
    assert m.intervals_from_elements(parse_elements(blob), 4) == frozenset(intervals)


def test_host_elements_are_bare_keys() -> None:
    (v4,) = parse_elements(b"".join(m.host_elements([Interval.from_cidr("192.0.2.7/32")])))
    (v6,) = parse_elements(b"".join(m.host_elements([Interval.from_cidr("2001:db8::1/128")])))
    assert (v4.key, v4.flags) == (bytes([192, 0, 2, 7]), 0)
    assert v6.key == bytes.fromhex("20010db8000000000000000000000001")


def test_a_leading_end_element_from_nft_is_ignored() -> None:
    elements = [m.Element(b"\0\0\0\0", m.NFT_SET_ELEM_INTERVAL_END), m.Element(bytes([10, 0, 0, 0])), m.Element(bytes([11, 0, 0, 0]), 1)]
    assert m.intervals_from_elements(elements, 4) == {Interval.from_cidr("10.0.0.0/8")}


def test_rules_compare_as_dumped() -> None:
    wanted = m.match_exprs(4, "192.0.2.1", 2525, "h4_A") + [m.goto("refuse_A")]
    dumped = m.decode_exprs(m.encode_exprs(wanted))
    assert m.same_exprs(dumped, wanted)
    # the kernel may add attributes we do not send: zero ones are defaults ...
    name, data = dumped[-2]  # the lookup
    assert name == "lookup"
    assert m.same_exprs(dumped[:-2] + [(name, {**data, 5: struct.pack(">I", 0)})] + dumped[-1:], wanted)
    # ... but an inverted lookup (!= @set) is a different rule
    assert not m.same_exprs(dumped[:-2] + [(name, {**data, 5: struct.pack(">I", 1)})] + dumped[-1:], wanted)
    assert not m.same_exprs(m.decode_exprs(m.encode_exprs(m.match_exprs(4, "192.0.2.1", 2526, "h4_A") + [m.goto("refuse_A")])), wanted)
    assert not m.same_exprs(dumped[:-1], wanted)


def test_element_messages_stay_below_the_attribute_length_limit() -> None:
    elements = m.interval_elements([Interval(6, i << 64, (i << 64) + 5) for i in range(5000)])
    msgs = m.element_messages(nfnl.NEWSETELEM, "netpolicy", "n6_A", elements)
    assert len(msgs) > 1
    total = 0
    for msg in msgs:
        a = nfnl.attrs(msg.body)
        assert len(a[m.ELIST_ELEMENTS]) < 65535 - 4
        total += len(list(nfnl.iter_attrs(a[m.ELIST_ELEMENTS])))
    assert total == 10000  # a start and an end element per interval


def test_udata_comments_round_trip() -> None:
    blob = m.comment_udata("netpolicy A hosts4 gen=abc")
    assert m.udata_comment(blob) == "netpolicy A hosts4 gen=abc"
    assert m.udata_comment(None) is None
