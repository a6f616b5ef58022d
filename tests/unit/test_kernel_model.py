"""Kernel-layer values: intervals, diff lines and JSON, status lines, listener ids and layout."""

from __future__ import annotations

import pytest

from netpolicy.kernel.layout import (
    families_for,
    layout,
    listener_id,
    rule_comment,
    split_comment,
)
from netpolicy.kernel.values import (
    KernelDiff,
    KernelError,
    KernelStatus,
    ListenerStatus,
    MissingCapability,
    Problem,
    SetDelta,
)
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan, ListenerPlan


def test_interval_from_cidr_and_back() -> None:
    assert Interval.from_cidr("192.0.2.0/24") == Interval(4, 0xC0000200, 0xC00002FF)
    assert Interval.from_cidr("192.0.2.7") == Interval(4, 0xC0000207, 0xC0000207)
    assert Interval.from_cidr("2001:db8::/32").cidrs() == ["2001:db8::/32"]
    assert Interval.from_cidr("0.0.0.0/0").last == (1 << 32) - 1
    assert Interval(4, 0xC6336401, 0xC6336404).cidrs() == ["198.51.100.1/32", "198.51.100.2/31", "198.51.100.4/32"]


@pytest.mark.parametrize("bad", ["192.0.2.1/24", "192.0.2.0/33", "2001:db8::1/32", "10.1", "nonsense/8"])
def test_interval_rejects_host_bits_and_garbage(bad: str) -> None:
    with pytest.raises((ValueError, OSError)):
        Interval.from_cidr(bad)


def test_diff_lines_and_json() -> None:
    delta = SetDelta("IncomingMail", 4, frozenset({Interval.from_cidr("192.0.2.0/24")}), frozenset({Interval.from_cidr("198.51.100.7/32")}))
    diff = KernelDiff("nftables", "g2", "g1", (Problem("missing-rule", "netpolicy IncomingMail hosts4"),), (delta,))
    assert not diff.in_sync and diff.element_changes == 2
    assert diff.lines() == [
        "! missing rule: netpolicy IncomingMail hosts4",
        "+ 192.0.2.0/24 -> IncomingMail refuse4",
        "- 198.51.100.7/32 -> IncomingMail refuse4",
    ]
    assert diff.as_json() == {
        "backend": "nftables", "in_sync": False, "generation": "g2", "kernel_generation": "g1",
        "problems": [{"code": "missing-rule", "subject": "netpolicy IncomingMail hosts4", "detail": ""}],
        "sets": [{"listener": "IncomingMail", "set": "refuse4", "add": ["192.0.2.0/24"], "remove": ["198.51.100.7/32"]}],
    }
    assert KernelDiff("nftables", "g2", "g2").in_sync


def test_status_lines_and_json() -> None:
    status = KernelStatus("nftables", "g1", (
        ListenerStatus("Dual", "Dual", "::", 25, True, {"refuse4": 3, "promoted4": 0}, 7),
        ListenerStatus("old_one", "old_one", None, None, False),
    ))
    assert status.lines() == [
        "backend: nftables", "generation: g1",
        "Dual [::]:25 installed refused=7 promoted4=0 refuse4=3",
        "old_one (not in policy) not installed refused=0",
    ]
    assert status.as_json()["listeners"][0] == {
        "name": "Dual", "listener_id": "Dual", "address": "::", "port": 25, "installed": True,
        "sets": {"refuse4": 3, "promoted4": 0}, "refused": 7,
    }


def test_missing_capability_names_it() -> None:
    assert "CAP_NET_ADMIN" in str(MissingCapability())
    assert isinstance(MissingCapability(), KernelError)


def test_listener_ids_are_readable_when_possible_and_always_short_and_distinct() -> None:
    assert listener_id("IncomingMail") == "IncomingMail"
    hashed = {listener_id(n) for n in ("In-Mail", "In_Mail-x", "a" * 24, "a" * 23, "Out-Mail")}
    assert len(hashed) == 5
    assert all(len(i) <= 18 and "-" in i for i in hashed)
    assert listener_id("In-Mail") == listener_id("In-Mail")


def test_families_follow_the_bind_address() -> None:
    assert families_for("0.0.0.0") == (4,)
    assert families_for("192.0.2.1") == (4,)
    assert families_for("2001:db8::1") == (6,)
    assert families_for("::") == (4, 6)
    with pytest.raises(KernelError):
        families_for("mx.example.test")


def test_layout_skips_userland_listeners_and_rejects_clashing_ids() -> None:
    plan = KernelPlan("g", (
        ListenerPlan("A", "0.0.0.0", 25, True, (Interval.from_cidr("192.0.2.0/24"),)),
        ListenerPlan("B", "2001:db8::1", 26, False),
    ))
    (only,) = layout(plan)
    assert only.name == "A" and only.daddr(4) is None and only.refuse(4) == (Interval.from_cidr("192.0.2.0/24"),)
    clash = KernelPlan("g", (ListenerPlan("A", "0.0.0.0", 25, True), ListenerPlan("A", "::", 26, True)))
    with pytest.raises(KernelError, match="same kernel id"):
        layout(clash)


def test_rule_comments_carry_the_generation() -> None:
    comment = rule_comment("netpolicy A hosts4", "abc123")
    assert split_comment(comment) == ("netpolicy A hosts4", "abc123")
    assert split_comment("someone else's rule") == ("someone else's rule", None)


def test_limited_lines_are_the_first_ones_in_address_order() -> None:
    adds = frozenset(Interval(4, 0x0A000000 + 2 * i, 0x0A000000 + 2 * i) for i in range(1000))
    diff = KernelDiff("nftables", "g", None, (Problem("missing-table", "inet netpolicy"),), (SetDelta("L", 4, adds),))
    assert diff.lines(3) == ["! missing table: inet netpolicy", "+ 10.0.0.0/32 -> L refuse4", "+ 10.0.0.2/32 -> L refuse4"]
    assert len(diff.lines()) == 1001
