"""Compiler: minimal refuse sets, hole carving, userland-only entries with their reasons."""

from netpolicy.model.compiler import compile_policy
from netpolicy.model.entries import AddressSetEntry
from netpolicy.model.intervals import Interval, cidr_texts
from netpolicy.model.plan import ListenerPlan, UserlandOnly
from tests.support.policies import make_policy


def plan_of(*args, **kwargs):  # type: ignore[no-untyped-def]
    return compile_policy(make_policy(*args, **kwargs)).listeners[0]


def v4(lp: ListenerPlan) -> tuple[str, ...]:
    """The IPv4 refuse set as ``compile --json`` writes it."""
    return tuple(cidr_texts(lp.refuse4))


def v6(lp: ListenerPlan) -> tuple[str, ...]:
    return tuple(cidr_texts(lp.refuse6))


def test_sets_are_sorted_and_collapsed() -> None:
    lp = plan_of(
        [("BL", "tcprefuse")],
        {"BL": ["192.0.2.128/25", "192.0.2.0/25", "10.0.0.5", "10.0.0.4", "198.51.100.10-20", "10.0.0.0/30", "2001:db8:bad::/48", "2001:db8:bad:1::/64"]},
    )
    assert v4(lp) == ("10.0.0.0/30", "10.0.0.4/31", "192.0.2.0/24", "198.51.100.10/31", "198.51.100.12/30", "198.51.100.16/30", "198.51.100.20/32")
    assert v6(lp) == ("2001:db8:bad::/48",)
    assert lp.userland_only == ()
    assert lp.refuse4 == (Interval(4, 0x0A000000, 0x0A000005), Interval(4, 0xC0000200, 0xC00002FF), Interval(4, 0xC633640A, 0xC6336414))


def test_earlier_accept_carves_holes() -> None:
    lp = plan_of([("TRUSTED", "accept"), ("BL", "tcprefuse")], {"TRUSTED": ["10.66.0.5"], "BL": ["10.66.0.0/16"]})
    assert "10.66.0.5/32" not in v4(lp)
    assert v4(lp) == ("10.66.0.0/30", "10.66.0.4/32", "10.66.0.6/31", "10.66.0.8/29", "10.66.0.16/28", "10.66.0.32/27",
                          "10.66.0.64/26", "10.66.0.128/25", "10.66.1.0/24", "10.66.2.0/23", "10.66.4.0/22", "10.66.8.0/21",
                          "10.66.16.0/20", "10.66.32.0/19", "10.66.64.0/18", "10.66.128.0/17")


def test_continue_rows_carve_no_holes() -> None:
    lp = plan_of([("A", "continue"), ("BL", "tcprefuse")], {"A": ["10.0.0.0/8"], "BL": ["10.1.0.0/16"]})
    assert v4(lp) == ("10.1.0.0/16",)


def test_hostname_entry_with_other_behaviour_makes_later_addresses_userland_only() -> None:
    lp = plan_of(
        [("EARLY", "tcprefuse"), ("PARTNERS", "accept"), ("BL", "tcprefuse")],
        {"EARLY": ["192.0.2.0/24"], "PARTNERS": [".partner.test", "10.9.9.9"], "BL": ["10.66.0.0/16", "198.51.100.7"]},
    )
    assert v4(lp) == ("192.0.2.0/24",)
    reason = "host-name entry .partner.test of PARTNERS (accept) precedes it"
    assert lp.userland_only == (UserlandOnly("BL", "10.66.0.0/16", reason), UserlandOnly("BL", "198.51.100.7", reason))


def test_dnslist_and_hostname_entries_of_a_refuse_row_are_userland_only() -> None:
    lp = plan_of([("BL", "tcprefuse")], {"BL": ["dnslist[bl.test]", ".spam.test", "10.6.6.6"]})
    assert v4(lp) == ("10.6.6.6/32",)
    assert [(u.entry, u.reason) for u in lp.userland_only] == [
        ("dnslist[bl.test]", "DNS-list entries cannot be decided in the kernel"),
        (".spam.test", "host-name entries cannot be decided in the kernel"),
    ]


def test_all_refused_leaves_only_earlier_holes() -> None:
    lp = plan_of([("OK", "accept")], {"OK": ["10.0.0.0/8", "2001:db8::/32"]}, all_behavior="tcprefuse")
    assert "0.0.0.0/5" in v4(lp) and not any(c.startswith("10.") for c in v4(lp))
    assert "2001:db8::/32" not in v6(lp) and "::/3" in v6(lp)


def test_kernel_off_listener_has_empty_sets_and_says_why() -> None:
    lp = plan_of([("BL", "tcprefuse")], {"BL": ["10.6.6.6"]}, kernel=False)
    assert (lp.kernel, v4(lp), v6(lp)) == (False, (), ())
    assert lp.userland_only == (UserlandOnly("BL", "10.6.6.6", "kernel enforcement is off for this listener"),)


def test_score_entries_are_userland_only_and_block_later_rows() -> None:
    lp = plan_of([("BAD", "tcprefuse"), ("GOOD", "accept"), ("BL", "tcprefuse")],
                 {"BAD": ["score[-10:-3]", "10.6.6.6"], "GOOD": ["score[3:10]"], "BL": ["10.66.0.0/16"]})
    assert v4(lp) == ("10.6.6.6/32",)
    assert lp.userland_only == (
        UserlandOnly("BAD", "score[-10:-3]", "score entries cannot be decided in the kernel"),
        UserlandOnly("BL", "10.66.0.0/16", "score entry score[3:10] of GOOD (accept) precedes it"),
    )


def test_address_sets_compile_like_address_entries() -> None:
    listed = AddressSetEntry("file:drop.txt", ((0x0A000000, 0x0A0000FF), (0x0A000200, 0x0A000200)), ((1 << 64, 1 << 65),), "d1")
    lp = plan_of([("OK", "accept"), ("BL", "tcprefuse")], {"OK": ["10.0.0.0/25"], "BL": [listed, "10.0.2.1"]})
    assert v4(lp) == ("10.0.0.128/25", "10.0.2.0/31")
    assert v6(lp) == ("0:0:0:1::/64", "0:0:0:2::/128")
    blocked = plan_of([("P", "accept"), ("BL", "tcprefuse")], {"P": [".partner.test"], "BL": [listed]})
    assert blocked.userland_only == (UserlandOnly("BL", "file:drop.txt", "host-name entry .partner.test of P (accept) precedes it"),)
