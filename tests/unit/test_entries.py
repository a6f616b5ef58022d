"""Every sender-group entry form of SPEC.md section 2, and the errors for bad ones."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.model.entries import (
    AddressEntry,
    AllEntry,
    DnsListEntry,
    EntryError,
    HostnameEntry,
    parse_entry,
)
from netpolicy.model.intervals import Interval


def span(text: str) -> tuple[str, str]:
    e = parse_entry(text)
    assert isinstance(e, AddressEntry)
    f = ipaddress.IPv4Address if e.family == 4 else ipaddress.IPv6Address
    return str(f(e.start)), str(f(e.end))


@pytest.mark.parametrize(
    "text, first, last",
    [
        ("203.0.113.7", "203.0.113.7", "203.0.113.7"),
        ("10.1.1.", "10.1.1.0", "10.1.1.255"),
        ("10.1.1", "10.1.1.0", "10.1.1.255"),
        ("10.1.", "10.1.0.0", "10.1.255.255"),
        ("10.", "10.0.0.0", "10.255.255.255"),
        ("10.1.1.0-50", "10.1.1.0", "10.1.1.50"),
        ("198.51.100.10-20", "198.51.100.10", "198.51.100.20"),
        ("10.1.1.0-10.1.2.255", "10.1.1.0", "10.1.2.255"),
        ("10.1.0.0/16", "10.1.0.0", "10.1.255.255"),
        ("2001:db8::7", "2001:db8::7", "2001:db8::7"),
        ("2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("2001:db8::1-2001:db8::ff", "2001:db8::1", "2001:db8::ff"),
    ],
)
def test_address_forms(text: str, first: str, last: str) -> None:
    assert span(text) == (first, last)


def test_symbolic_forms() -> None:
    assert parse_entry("mail.Example.com") == HostnameEntry("mail.Example.com", "mail.example.com", False)
    sub = parse_entry(".example.com")
    assert isinstance(sub, HostnameEntry) and sub.suffix
    assert sub.matches("a.b.example.com") and not sub.matches("example.com") and not sub.matches("badexample.com")
    assert parse_entry("dnslist[bl.example.test]") == DnsListEntry("dnslist[bl.example.test]", "bl.example.test")
    assert parse_entry("ALL") == AllEntry()


@pytest.mark.parametrize(
    "text, message",
    [
        ("10.1.1.300", "not an IPv4 address"),
        ("10.1.1.256-10.1.2.3", "not an IPv4 address"),
        ("10.1.1.1/33", "prefix length"),
        ("10.1.1.1/24", "host bits set"),
        ("10.1.1.9-3", "ends before it starts"),
        ("10.1.1.1-300", "not an octet"),
        ("10.1.1.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("2001:db8::zz", "not an IPv6 address"),
        ("1.2.3.4.5", "not an IPv4 address"),
        ("bad..name", "not an address"),
        ("dnslist[]", "not an address"),
        ("", "empty"),
    ],
)
def test_bad_entries(text: str, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        parse_entry(text)


def test_a_range_entry_as_cidrs_is_minimal() -> None:
    e = parse_entry("198.51.100.10-20")
    assert isinstance(e, AddressEntry)
    cidrs = Interval(4, e.start, e.end).cidrs()
    assert cidrs == ["198.51.100.10/31", "198.51.100.12/30", "198.51.100.16/30", "198.51.100.20/32"]
    covered = {a for c in cidrs for a in ipaddress.ip_network(c)}
    assert covered == {ipaddress.ip_address(f"198.51.100.{i}") for i in range(10, 21)}


@pytest.mark.parametrize("text", ["1.2.3.4\x00/24", "1.2.3.4\x00", "10.0.0.0/8\x00"])
def test_a_nul_inside_an_entry_is_an_entry_error(text: str) -> None:
    with pytest.raises(EntryError):
        parse_entry(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from(["", " ", "\t"]), st.sampled_from(["", "0"]))
def test_dotted_quads_and_networks_agree_with_ipaddress(value: int, length: int, pad: str, zero: str) -> None:
    """The short path for ``a.b.c.d[/n]`` and the general one give what ``ipaddress`` gives."""
    host = str(ipaddress.IPv4Address(value))
    assert parse_entry(pad + host + pad) == AddressEntry(host, 4, value, value)
    net = ipaddress.IPv4Network((value, length), strict=False)
    text = f"{net.network_address}/{zero}{length}"  # "/08" is the general path's
    assert parse_entry(pad + text + pad) == AddressEntry(text, 4, int(net.network_address), int(net.broadcast_address))
    if int(net.network_address) != value:
        with pytest.raises(EntryError, match="host bits set"):
            parse_entry(f"{host}/{length}")
