"""``country[...]`` entries and the decision's country, from a small MaxMind DB written in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from netpolicy.model import PolicyError, load_policy
from netpolicy.model.compiler import compile_policy
from netpolicy.model.entries import AddressSetEntry
from netpolicy.model.geoip import load_table, read_table
from netpolicy.model.hat import build_hat_indexes
from netpolicy.model.intervals import cidr_texts
from netpolicy.model.loader import source_files
from tests.support.geoip import country_database

COUNTRIES = {"CN": ["198.51.100.0/25", "2001:db8:c::/48"], "RU": ["198.51.100.128/25"], "FR": ["192.0.2.0/24"]}

POLICY = """\
version: 1
listeners:
  - name: In
    address: 10.0.0.1
    port: 25
    hat:
      - {{group: WL, policy: OK}}
      - {{group: FOREIGN, policy: BLOCKED}}
      - {{group: ALL, policy: OK}}
    rat: [{{recipient: ALL, action: accept}}]
sender_groups:
  WL: [198.51.100.7]
  FOREIGN: ["{entry}"]
mail_flow_policies:
  OK: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
{geoip}"""


def write_policy(tmp_path: Path, entry: str = "country[CN, ru]", geoip: str = "geoip: {database: country.mmdb}\n") -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(POLICY.format(entry=entry, geoip=geoip))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def test_country_entries_become_the_countries_ranges(tmp_path: Path) -> None:
    country_database(tmp_path / "country.mmdb", COUNTRIES)
    policy = load_policy(write_policy(tmp_path))
    entry = policy.sender_groups["FOREIGN"][0]
    assert isinstance(entry, AddressSetEntry) and entry.text == "country[CN, ru]"
    lp = compile_policy(policy).listeners[0]
    assert cidr_texts(lp.refuse4) == ["198.51.100.0/30", "198.51.100.4/31", "198.51.100.6/32",  # WL's .7 carved out
                                      "198.51.100.8/29", "198.51.100.16/28", "198.51.100.32/27", "198.51.100.64/26",
                                      "198.51.100.128/25"]
    assert cidr_texts(lp.refuse6) == ["2001:db8:c::/48"]
    assert lp.userland_only == ()


def test_decisions_carry_the_country(tmp_path: Path) -> None:
    country_database(tmp_path / "country.mmdb", COUNTRIES)
    hat = build_hat_indexes(load_policy(write_policy(tmp_path)))["In"]
    got = {a: (d.sender_group, d.match, d.behavior, d.country) for a in
           ("198.51.100.200", "2001:db8:c::1", "198.51.100.7", "192.0.2.1", "10.9.9.9") for d in [hat.decide(a)]}
    assert got == {
        "198.51.100.200": ("FOREIGN", "country[CN, ru]", "tcprefuse", "RU"),
        "2001:db8:c::1": ("FOREIGN", "country[CN, ru]", "tcprefuse", "CN"),
        "198.51.100.7": ("WL", "198.51.100.7", "accept", "CN"),
        "192.0.2.1": ("ALL", "ALL", "accept", "FR"),
        "10.9.9.9": ("ALL", "ALL", "accept", None),
    }


def test_no_geoip_block_no_country(tmp_path: Path) -> None:
    hat = build_hat_indexes(load_policy(write_policy(tmp_path, entry="198.51.100.0/24", geoip="")))["In"]
    assert hat.decide("198.51.100.200").country is None


def test_registered_country_when_the_network_has_no_country(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["192.0.2.0/25"]), {"registered_country": {"iso_code": "US"}})
    writer.insert_network(IPSet(["192.0.2.128/25"]), {"country": {"iso_code": "DE"}, "registered_country": {"iso_code": "US"}})
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"continent": {"code": "EU"}})
    writer.to_db_file(str(tmp_path / "db.mmdb"))
    table = read_table(str(tmp_path / "db.mmdb"))
    assert [table.country_of(a) for a in ("192.0.2.1", "192.0.2.200", "198.51.100.1")] == ["US", "DE", None]
    assert table.entry("country[US]", ["US"]).v4 == ((0xC0000200, 0xC000027F),)


def test_a_country_entry_needs_a_geoip_block(tmp_path: Path) -> None:
    path = write_policy(tmp_path, geoip="")
    assert problems(path) == [f"{path}:{line_of(path, 'FOREIGN: [')}: country[CN, ru] needs a geoip block (the MaxMind DB countries are read from)"]


def test_a_score_entry_needs_a_reputation_block(tmp_path: Path) -> None:
    path = write_policy(tmp_path, entry="score[-10:-3]", geoip="")
    assert problems(path) == [f"{path}:{line_of(path, 'FOREIGN: [')}: score[-10:-3] needs a reputation block (the DNS lists the score is made of)"]


def test_an_unusable_database_is_an_error_at_the_geoip_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    line = line_of(path, "geoip:")
    assert problems(path) == [f"{path}:{line}: geoip.database: cannot read {tmp_path / 'country.mmdb'}: No such file or directory"]
    (tmp_path / "country.mmdb").write_bytes(b"this is not a MaxMind DB\n" * 100)
    (got,) = problems(path)
    assert got.startswith(f"{path}:{line}: geoip.database: {tmp_path / 'country.mmdb'} is not a MaxMind DB file (")


def test_generation_follows_the_database(tmp_path: Path) -> None:
    database = country_database(tmp_path / "country.mmdb", COUNTRIES)
    path = write_policy(tmp_path, entry="10.9.9.9")  # no country entry: decisions still carry the country
    first = load_policy(path).generation()
    assert load_policy(path).generation() == first
    country_database(database, {**COUNTRIES, "FR": ["192.0.2.0/25"]})
    assert load_policy(path).generation() != first


def test_an_unchanged_database_is_not_read_again(tmp_path: Path) -> None:
    database = country_database(tmp_path / "country.mmdb", COUNTRIES)
    first = load_table(str(database))
    assert load_table(str(database)) is first
    country_database(tmp_path / "new.mmdb", {"FR": ["192.0.2.0/24"]}).rename(database)  # renamed over: a new inode
    assert load_table(str(database)).country_of("198.51.100.1") is None


def test_source_files_name_the_database(tmp_path: Path) -> None:
    country_database(tmp_path / "country.mmdb", COUNTRIES)
    assert source_files(load_policy(write_policy(tmp_path))) == (str(tmp_path / "country.mmdb"),)
