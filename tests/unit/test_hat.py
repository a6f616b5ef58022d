"""HAT matching: first match wins, CONTINUE passes, every entry form, DNS asked only when needed."""

import asyncio

from netpolicy.model.hat import Fact, HatIndex, build_hat_indexes
from netpolicy.model.policy import Policy
from tests.support.policies import make_policy


def hat(policy: Policy) -> HatIndex:
    return build_hat_indexes(policy)["L"]


def test_first_match_wins_and_reports_entry() -> None:
    p = make_policy([("A", "accept"), ("B", "tcprefuse")], {"A": ["10.1.1.5"], "B": ["10.1.1.0/24", "10.1.1.5"]})
    h = hat(p)
    d = h.decide("10.1.1.5")
    assert (d.sender_group, d.match, d.behavior, d.policy.name) == ("A", "10.1.1.5", "accept", "P0")
    d = h.decide("10.1.1.6")
    assert (d.sender_group, d.match, d.behavior) == ("B", "10.1.1.0/24", "tcprefuse")
    d = h.decide("10.2.0.1")
    assert (d.sender_group, d.match, d.behavior) == ("ALL", "ALL", "accept")


def test_overlapping_entries_in_a_group_report_the_first_listed() -> None:
    h = hat(make_policy([("G", "reject")], {"G": ["10.1.1.0-10.1.1.20", "10.1.1.", "10.1.1.7", "10."]}))
    assert h.decide("10.1.1.7").match == "10.1.1.0-10.1.1.20"
    assert h.decide("10.1.1.21").match == "10.1.1."
    assert h.decide("10.9.9.9").match == "10."


def test_continue_passes_to_the_next_row() -> None:
    h = hat(make_policy([("A", "continue"), ("B", "reject")], {"A": ["10.1.1.5"], "B": ["10.1.1.0/24"]}))
    d = h.decide("10.1.1.5")
    assert (d.sender_group, d.behavior) == ("B", "reject")


def test_every_entry_form() -> None:
    groups = {
        "G1": ["203.0.113.7"],
        "G2": ["10.1.1."],
        "G3": ["10.2.2.0-50"],
        "G4": ["10.3.0.0-10.3.1.255"],
        "G5": ["10.4.0.0/16"],
        "G6": ["2001:db8::/32"],
        "G7": ["mail.partner.test"],
        "G8": [".example.com"],
        "G9": ["dnslist[bl.example.test]"],
    }
    h = hat(make_policy([(g, "accept") for g in groups], groups))
    cases = {
        ("203.0.113.7", None): "G1",
        ("10.1.1.200", None): "G2",
        ("10.2.2.50", None): "G3",
        ("10.2.2.51", None): "ALL",
        ("10.3.1.255", None): "G4",
        ("10.4.200.1", None): "G5",
        ("2001:db8:1::9", None): "G6",
        ("10.9.9.9", "mail.partner.test"): "G7",
        ("10.9.9.9", "MX1.Example.COM."): "G8",
        ("10.9.9.9", "example.com"): "ALL",
    }
    for (address, hostname), group in cases.items():
        assert h.decide(address, hostname=hostname).sender_group == group, (address, hostname)
    assert h.decide("10.9.9.9", dnslisted=lambda zone, pattern: zone == "bl.example.test").sender_group == "G9"


class CountingResolver:
    def __init__(self, hostname: str | None, listed: set[str]) -> None:
        self.hostname, self.listed = hostname, listed
        self.calls: list[str] = []

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        self.calls.append("ptr")
        return Fact(self.hostname, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> Fact[bool]:
        self.calls.append(zone)
        return Fact(zone in self.listed, 300.0)


def test_async_decision_asks_dns_only_when_a_row_needs_it() -> None:
    p = make_policy(
        [("WL", "accept"), ("HN", "reject"), ("BL", "tcprefuse"), ("DL", "reject")],
        {"WL": ["10.0.0.9"], "HN": [".bad.test"], "BL": ["10.6.0.0/16"], "DL": ["dnslist[z1.test]", "dnslist[z2.test]"]},
    )
    h = hat(p)
    r = CountingResolver("x.bad.test", set())
    assert asyncio.run(h.decide_async("10.0.0.9", r)).sender_group == "WL" and r.calls == []
    assert asyncio.run(h.decide_async("10.5.0.1", r)).sender_group == "HN" and r.calls == ["ptr"]
    r = CountingResolver(None, {"z2.test"})
    d = asyncio.run(h.decide_async("10.5.0.1", r))
    assert (d.sender_group, d.match) == ("DL", "dnslist[z2.test]") and r.calls == ["ptr", "z1.test", "z2.test"]


def test_effective_policy_uses_listener_defaults_then_builtins() -> None:
    p = make_policy([("A", "accept")], {"A": ["10.1.1.1"]})
    data = p.model_dump(mode="json")
    data["listeners"][0]["defaults"] = {"max_rcpts_per_msg": 7, "max_concurrency": 3}
    data["mail_flow_policies"]["P0"]["max_concurrency"] = 9
    d = build_hat_indexes(Policy.model_validate(data))["L"].decide("10.1.1.1")
    assert (d.policy.max_rcpts_per_msg, d.policy.max_concurrency, d.policy.max_msgs_per_session) == (7, 9, None)
    assert (d.policy.reject_banner_code, d.policy.rate_limit_code, d.policy.tls) == (554, 452, "off")
