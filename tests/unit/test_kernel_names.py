"""Names and small conversions of both backends: what is ours, ipset headers, hash:net entries."""

from __future__ import annotations

import pytest

from netpolicy.kernel import ipset
from netpolicy.kernel import iptables as ipt
from netpolicy.kernel import nftables as nft
from netpolicy.model.intervals import Interval

IPSET_LIST = """Name: netpolicy-IncomingMail-r4
Type: hash:net
Revision: 7
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2f6a3c8b
Size in memory: 552
References: 1
Number of entries: 2

Name: other
Type: hash:ip
Revision: 6
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
Size in memory: 200
References: 0
Number of entries: 1

Name: netpolicy-IncomingMail-p6
Type: hash:ip
Revision: 6
Header: family inet6 hashsize 1024 maxelem 131072 timeout 0 bucketsize 12 initval 0x2
Size in memory: 224
References: 1
Number of entries: 0
"""


def test_ipset_headers_list_only_our_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipset, "run", lambda args, input=None: IPSET_LIST)
    assert ipset.headers() == {
        "netpolicy-IncomingMail-r4": ipset.SetHeader("netpolicy-IncomingMail-r4", "hash:net", "inet", 65536, 2, False),
        "netpolicy-IncomingMail-p6": ipset.SetHeader("netpolicy-IncomingMail-p6", "hash:ip", "inet6", 131072, 0, True),
    }


def test_ipset_members_with_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = "create netpolicy-A-p4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 0\nadd netpolicy-A-p4 192.0.2.9 timeout 42\n"
    monkeypatch.setattr(ipset, "run", lambda args, input=None: saved)
    assert ipset.members("netpolicy-A-p4") == [("192.0.2.9", 42.0)]


def test_set_names_round_trip() -> None:
    assert nft.NAMES.parse(nft.NAMES.name("hosts", "In_Mail-1a2b3c", 6)) == ("hosts", 6, "In_Mail-1a2b3c")
    assert nft.NAMES.parse("trusted") is None
    assert ipt.NAMES.parse(ipt.NAMES.name("refuse", "In_Mail-1a2b3c", 4)) == ("refuse", 4, "In_Mail-1a2b3c")
    assert ipt.NAMES.parse("netpolicy~In_Mail-r4") is None  # a temporary set is ours but not a live one
    assert len(ipt.temp_name(ipt.NAMES.name("refuse", "x" * 18, 6))) <= 31


def test_hash_net_takes_ranges_as_cidr_blocks_and_has_no_slash_zero() -> None:
    def entries(*ranges: Interval) -> set[str]:
        return {c for i in ipt.ipset_intervals(ranges) for c in i.cidrs()}

    assert entries(Interval.from_cidr("0.0.0.0/0")) == {"0.0.0.0/1", "128.0.0.0/1"}
    assert entries(Interval.from_cidr("::/0")) == {"::/1", "8000::/1"}
    assert entries(Interval.from_cidr("192.0.2.0/24")) == {"192.0.2.0/24"}
    assert entries(Interval(4, 0xC6336401, 0xC6336404)) == {"198.51.100.1/32", "198.51.100.2/31", "198.51.100.4/32"}
