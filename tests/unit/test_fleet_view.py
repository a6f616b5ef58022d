"""Which gateways ``status --fleet`` flags, and how it reads the keys of shared refusals."""

from __future__ import annotations

from netpolicy.daemon.fleet import Gateway, flags, majority
from netpolicy.daemon.shared_refusals import glob_escape, parse_key


def gateway(pid: int, generation: str) -> Gateway:
    return Gateway("mx", pid, ["IncomingMail 0.0.0.0:25"], generation, 0.0, 0.0)


def test_a_gateway_off_the_majority_is_flagged_even_when_this_host_has_no_say() -> None:
    fleet = [gateway(1, "new"), gateway(2, "new"), gateway(3, "old")]
    assert majority(fleet) == "new"
    assert flags(fleet, None) == {"mx:3": "runs generation old, but the majority runs new"}


def test_without_a_majority_this_hosts_policy_file_decides() -> None:
    fleet = [gateway(1, "new"), gateway(2, "old")]
    assert majority(fleet) is None
    assert flags(fleet, "new") == {"mx:2": "runs generation old, but this host's policy file is at new"}
    assert flags(fleet, "newer") == {
        "mx:1": "runs generation new, but this host's policy file is at newer",
        "mx:2": "runs generation old, but this host's policy file is at newer",
    }


def test_both_reasons_are_given() -> None:
    fleet = [gateway(1, "a"), gateway(2, "a"), gateway(3, "b")]
    assert flags(fleet, "b") == {"mx:1": "runs generation a, but this host's policy file is at b",
                                 "mx:2": "runs generation a, but this host's policy file is at b",
                                 "mx:3": "runs generation b, but the majority runs a"}
    assert flags([gateway(1, "a")], "a") == {}


def test_host_keys_keep_an_ipv6_address_whole_and_skip_anything_else() -> None:
    assert parse_key("np:", "np:held:promoted:IncomingMail:2001:db8::7") == ("promoted", "IncomingMail", "2001:db8::7")
    assert parse_key("np:", "np:held:learned:In:192.0.2.1") == ("learned", "In", "192.0.2.1")
    assert parse_key("np:", "np:held:other:In:192.0.2.1") is None
    assert parse_key("np:", "np:held:promoted:In:not-an-address") is None
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
