"""Countries from a MaxMind DB file (``geoip.database``, SPEC.md section 7).

The database is read once into merged integer intervals per country, the form every consumer
already works on: ``country[CN,RU]`` becomes an ``AddressSetEntry`` of those countries' ranges
(compiled into the kernel sets like any address entry), and ``country_of`` answers the decision
line's ``country CN`` with a bisect, like a HAT lookup. Nothing asks the reader per connection.

A network's country is its record's ``country.iso_code``, else ``registered_country.iso_code``
(anycast and satellite ranges carry only the latter in GeoLite2). Like list files, a database is
read again only when its file changed (same stat key as ``lists.read_list``). Reading costs
the reader's iteration, which decodes every network's record: 50k networks with GeoLite2's
records (names in 8 languages) take 1.2 s on this project's 2-core machines, so a real
GeoLite2-Country file takes seconds, once per process and change.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netpolicy.model.entries import AddressSetEntry, address_to_int
from netpolicy.model.fileid import FileId, file_id
from netpolicy.model.intervals import LabelledIndex, merge

Span = tuple[int, int]


class GeoIPError(Exception):
    """The database cannot be used (missing, unreadable, not a MaxMind DB)."""


@dataclass(frozen=True)
class CountryTable:
    """Every country's ranges from one database, and a lookup index over all of them."""

    path: str
    digest: str
    ranges: Mapping[str, tuple[tuple[Span, ...], tuple[Span, ...]]]  # code -> (v4, v6), merged
    _codes: tuple[str, ...]
    _index: Mapping[int, LabelledIndex]

    def country_of(self, address: str) -> str | None:
        """The ISO code of ``address`` (an IPv4 or IPv6 literal), None when the database has none."""
        family, value = address_to_int(address)
        return self.country_of_value(family, value)

    def country_of_value(self, family: int, value: int) -> str | None:
        label = self._index[family].find(value)
        return None if label is None else self._codes[label]

    def entry(self, text: str, codes: Iterable[str]) -> AddressSetEntry:
        """The ``AddressSetEntry`` a ``country[...]`` entry stands for (a code the database does
        not know matches nothing: GeoLite2 has no ranges for some territories)."""
        v4: list[Span] = []
        v6: list[Span] = []
        wanted = sorted(set(codes))
        for code in wanted:
            four, six = self.ranges.get(code, ((), ()))
            v4 += four
            v6 += six
        digest = hashlib.sha256(f"{self.digest}:{','.join(wanted)}".encode()).hexdigest()[:16]
        return AddressSetEntry(text, tuple(merge(v4)), tuple(merge(v6)), digest, self.path)


def _code(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2:
                return code.upper()
    return None


def read_table(path: str) -> CountryTable:
    """Read a MaxMind DB into a ``CountryTable``; raise GeoIPError saying why it cannot be used."""
    import maxminddb  # only policies with a geoip block pay for the import

    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
        reader = maxminddb.open_database(path)
    except OSError as exc:
        raise GeoIPError(f"cannot read {path}: {exc.strerror}") from None
    except (maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise GeoIPError(f"{path} is not a MaxMind DB file ({exc})") from None
    spans: dict[tuple[str, int], list[Span]] = {}
    try:
        with reader:
            for network, record in reader:
                code = _code(record)
                if code is not None:
                    spans.setdefault((code, network.version), []).append(
                        (int(network.network_address), int(network.broadcast_address)))
    except (maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise GeoIPError(f"{path} is not a MaxMind DB file ({exc})") from None
    codes = tuple(sorted({code for code, _ in spans}))
    ranges = {code: (tuple(merge(spans.get((code, 4), []))), tuple(merge(spans.get((code, 6), [])))) for code in codes}
    index: dict[int, LabelledIndex] = {}
    for family in (4, 6):
        labelled = [(span, n) for n, code in enumerate(codes) for span in ranges[code][family // 6]]
        built = LabelledIndex.build([span for span, _ in labelled])
        built.labels = [labelled[i][1] for i in built.labels]
        index[family] = built
    return CountryTable(path, digest, ranges, codes, index)


_cache: dict[str, tuple[FileId, CountryTable]] = {}
_lock = threading.Lock()


def load_table(path: str) -> CountryTable:
    """``read_table``, but a database whose file did not change is not read again."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GeoIPError(f"cannot read {path}: {exc.strerror}") from None
    key = file_id(st)
    with _lock:
        cached = _cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    table = read_table(path)
    with _lock:
        _cache.clear()  # one database per policy: an older one is garbage
        _cache[path] = (key, table)
    return table
