"""Country databases for tests: small MaxMind DB files in the layout of GeoLite2-Country.

Written with mmdb-writer and read by the same ``maxminddb`` reader a real GeoLite2-Country.mmdb
(from geoipupdate) or DB-IP's country lite file is read with: ``country.iso_code`` per network,
IPv4 networks reachable inside the IPv6 tree as in MaxMind's own files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]


def country_database(path: Path, countries: Mapping[str, Sequence[str]]) -> Path:
    """Write ``path``: each ISO 3166 code of ``countries`` covers its networks (CIDR text)."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    for code, networks in countries.items():
        writer.insert_network(IPSet(list(networks)), {"country": {"iso_code": code}})
    writer.to_db_file(str(path))
    return path
