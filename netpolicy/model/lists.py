"""List files (``file:`` entries, SPEC.md section 7): one address entry per line, read straight
into merged integer intervals.

A million-line list must go from file to kernel in seconds, so no line becomes an entry object:
the lines that are bare dotted quads (nearly every line of a real blocklist) are packed by
``inet_pton`` in C, turned into integers in bulk through an ``array``, sorted once and joined
into runs; only the other lines (networks, ranges, IPv6, comments, mistakes) go through
``entries.parse_entry``, so a list accepts exactly the address forms a sender group does.
1M lines (95% hosts) parse in about 2 s on this project's 2-core machines.

A list is read again only when its file changed: ``read_list`` keeps the last result per path
under ``(st_dev, st_ino, st_size, st_mtime_ns)`` (a file renamed over the old one has a new
inode; one written in place a new size or mtime). When it did change, the lines that differ
are found from the bytes kept of the last read and applied to the last content (``_changed``):
one line added to 1M costs about 0.1-0.3 s instead of a whole parse, which is what lets such a
change reach the kernel within a second.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import socket
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter, sub

from netpolicy.model.entries import (
    AddressEntry,
    AllEntry,
    CountryEntry,
    DnsListEntry,
    EntryError,
    HostnameEntry,
    ListFileEntry,
    ScoreEntry,
    parse_entry,
)
from netpolicy.model.fileid import FileId, file_id
from netpolicy.model.intervals import merge, union

Span = tuple[int, int]
# A million-line list is about 15 MiB; 16 times that is a mistake (a log file, a dump), not a list.
MAX_LIST_BYTES = 256 * 2**20
_COMMENT = ("#", ";")  # ';' is how Spamhaus DROP/EDROP files comment their lines


@dataclass(frozen=True, slots=True)
class ListContent:
    """What one list file holds: merged, sorted intervals per family, or why it cannot be used.

    ``problems`` are ``(line, message)`` pairs, at most the caller's limit; ``unlisted`` counts
    the rest. ``digest`` identifies the bytes, so the policy generation follows the file.
    """

    v4: tuple[Span, ...]
    v6: tuple[Span, ...]
    digest: str
    problems: tuple[tuple[int, str], ...] = ()
    unlisted: int = 0


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a parse keeps besides the content, so that a small change to the file is applied to
    the content instead of parsing every line again (``_changed``): the bytes, and what the
    lines hold as multisets (a line written twice is in them twice)."""

    data: bytes
    hosts: list[int]  # the bare dotted quads, sorted
    spans: dict[int, list[Span]]  # every other line's interval, per family


def parse_list(data: bytes, limit: int) -> ListContent:
    """Parse a list file's bytes; at most ``limit`` problems are kept, the others counted."""
    return _parsed(data, limit)[0]


def _parsed(data: bytes, limit: int, previous: tuple[ListContent, _Kept] | None = None) -> tuple[ListContent, _Kept | None]:
    """The content of ``data``, and what to keep for the next change (None when it has problems).
    Given the content of the file before, a change of a few lines is applied to it instead."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    if previous is not None and (changed := _changed(*previous, data, digest)) is not None:
        return changed
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return ListContent((), (), digest, ((line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})"),)), None
    if "\r" in text:  # CRLF lines would all miss the fast path below
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    packed, numbers = _pack_hosts(lines)
    spans: dict[int, list[Span]] = {4: [], 6: []}
    problems: list[tuple[int, str]] = []
    unlisted = 0
    for number in numbers:
        try:
            entry = _line_entry(lines[number])
        except EntryError as exc:
            if len(problems) < limit:
                problems.append((number + 1, str(exc)))
            else:
                unlisted += 1
            continue
        if entry is not None:
            spans[entry.family].append((entry.start, entry.end))
    hosts = _host_values(packed)
    v4 = union(_runs(hosts), merge(spans[4]))
    content = ListContent(tuple(v4), tuple(merge(spans[6])), digest, tuple(problems), unlisted)
    return content, None if problems or unlisted else _Kept(data, hosts, spans)


# Beyond this many lines changed, parsing the whole file is about as quick.
_MAX_CHANGES = 1000


def _changed(content: ListContent, kept: _Kept, data: bytes, digest: str) -> tuple[ListContent, _Kept] | None:
    """``content`` (of ``kept.data``) updated to the file now holding ``data``; None when too
    much changed or a changed line is wrong (the full parse then reports it with its number).

    The bytes before and after the change are found equal by halving (tens of ms for 15 MB);
    the lines between are the ones removed and added. Each one's range is then recomputed from
    every line still there that covers part of it. 1M lines, one added: about 0.1 s, where
    parsing them all takes 2 s.
    """
    old = kept.data
    if old.startswith(codecs.BOM_UTF8) or data.startswith(codecs.BOM_UTF8):
        return None
    prefix = _common_prefix(old, data)
    suffix = _common_suffix(old, data, min(len(old), len(data)) - prefix)
    start = old.rfind(b"\n", 0, prefix) + 1  # the changed lines, whole, in both
    old_end, new_end = (_line_end(d, len(d) - suffix) for d in (old, data))
    try:
        removed = old[start:old_end].decode().split("\n")
        added = data[start:new_end].decode().split("\n")
    except UnicodeDecodeError:
        return None
    if len(removed) + len(added) > _MAX_CHANGES:
        return None
    before, after = Counter(removed), Counter(added)  # lines between two changes are on both sides
    removed, added = list((before - after).elements()), list((after - before).elements())
    hosts, spans = list(kept.hosts), {4: list(kept.spans[4]), 6: list(kept.spans[6])}
    touched: list[tuple[int, int, int]] = []
    try:
        for line in removed:
            if (item := _line_item(line)) is not None:
                family, first, last = item
                if family == 4 and first == last and _is_host(line):
                    at = bisect_left(hosts, first)
                    if hosts[at] != first:
                        raise ValueError(line)
                    del hosts[at]
                else:
                    spans[family].remove((first, last))
                touched.append(item)
        for line in added:
            if (item := _line_item(line)) is not None:
                family, first, last = item
                if family == 4 and first == last and _is_host(line):
                    insort(hosts, first)
                else:
                    spans[family].append((first, last))
                touched.append(item)
    except (EntryError, ValueError, IndexError):  # a wrong line added; or, never, one not there
        return None
    out: dict[int, list[Span]] = {4: list(content.v4), 6: list(content.v6)}
    for family, first, last in touched:
        _recompute(out[family], first, last, hosts if family == 4 else [], spans[family])
    return ListContent(tuple(out[4]), tuple(out[6]), digest), _Kept(data, hosts, spans)


def _line_item(line: str) -> tuple[int, int, int] | None:
    """(family, first, last) of one line as the full parse reads it; None for blank or comment."""
    entry = _line_entry(line.removesuffix("\r"))
    return None if entry is None else (entry.family, entry.start, entry.end)


def _is_host(line: str) -> bool:
    """Would the full parse's fast path have taken this line (into ``hosts``, not ``spans``)?"""
    try:
        socket.inet_pton(socket.AF_INET, line.removesuffix("\r"))
    except (OSError, ValueError):
        return False
    return True


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix, by halving: each step compares one chunk."""
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; no longer prefix past high
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: bytes, b: bytes, most: int) -> int:
    """Length of the longest common suffix, at most ``most``."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle:len(a) - low] == b[len(b) - middle:len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


def _line_end(data: bytes, at: int) -> int:
    end = data.find(b"\n", at)
    return len(data) if end < 0 else end


def _recompute(out: list[Span], first: int, last: int, hosts: list[int], spans: list[Span]) -> None:
    """Make ``out`` (merged) exact over ``[first, last]``: the window grows to the intervals of
    ``out`` touching it, and its part of ``out`` is made again from what covers the window."""
    i = bisect_left(out, first - 1, key=_LAST)  # first interval ending at or after first - 1
    j = bisect_right(out, last + 1, i, key=_FIRST)  # first interval starting after last + 1
    if i < j:
        first, last = min(first, out[i][0]), max(last, out[j - 1][1])
    pieces = [(v, v) for v in hosts[bisect_left(hosts, first):bisect_right(hosts, last)]]
    pieces += [(max(start, first), min(end, last)) for start, end in spans if start <= last and end >= first]
    out[i:j] = merge(pieces)


_FIRST, _LAST = itemgetter(0), itemgetter(1)


def _pack_hosts(lines: list[str]) -> tuple[list[bytes], list[int]]:
    """Every line that is a bare dotted quad, packed; and the indexes of all other lines.

    ``map`` runs ``inet_pton`` over the lines in C and stops at the first line it refuses; the
    loop notes that line and resumes ``map`` on the same iterator after it. Against a Python loop
    with a ``try`` per line: 0.25 s for 1M lines instead of 0.43 s. ``inet_pton`` is strict (no
    ``10.1``, no octal, no spaces), so a line it refuses is not necessarily wrong: the general
    parser decides.
    """
    pton = partial(socket.inet_pton, socket.AF_INET)
    packed: list[bytes] = []
    others: list[int] = []
    rest = iter(lines)
    while True:
        try:
            packed.extend(map(pton, rest))
            return packed, others
        except (OSError, ValueError):  # ValueError: a NUL in the line
            others.append(len(packed) + len(others))


def _line_entry(line: str) -> AddressEntry | None:
    """One line that is not a bare dotted quad: None for a blank or comment line."""
    for mark in _COMMENT:
        line = line.partition(mark)[0]
    text = line.strip()
    if not text:
        return None
    entry = parse_entry(text)
    if isinstance(entry, AddressEntry):
        return entry
    what = _KINDS.get(type(entry), "not an address")
    raise EntryError(f"{text!r} is {what}: a list file holds addresses, ranges and networks only")


_KINDS: dict[type, str] = {
    HostnameEntry: "a host name", DnsListEntry: "a DNS list", ScoreEntry: "a score", CountryEntry: "a country entry",
    ListFileEntry: "another list", AllEntry: "ALL",
}


def _host_values(packed: list[bytes]) -> list[int]:
    """Packed IPv4 addresses as sorted integers: one join, one array, one sort."""
    values = array("I")
    if values.itemsize != 4:  # pragma: no cover - every Linux platform netpolicy runs on has 4
        values = array("L")
    values.frombytes(b"".join(packed))
    if sys.byteorder == "little":
        values.byteswap()
    return sorted(values)


def _runs(values: list[int]) -> list[Span]:
    """Sorted integers (duplicates allowed) as intervals joining equal and consecutive values.

    Neighbours are rare in a real list, so the gaps are computed in C (``map``), the few gaps
    of 0 or 1 found with ``list.index``, and the pairs between them copied by slices: 0.3 s
    for 1M values against 0.5 s for a loop looking at each value.
    """
    if not values:
        return []
    gaps = list(map(sub, values[1:], values))  # gaps[i] = values[i + 1] - values[i]
    joins: list[int] = []
    for small in (0, 1):
        at = -1
        with contextlib.suppress(ValueError):
            while True:
                at = gaps.index(small, at + 1)
                joins.append(at)
    pairs = list(zip(values, values, strict=True))
    if not joins:
        return pairs
    out: list[Span] = []
    done = 0  # values before this index are in ``out``
    for first, last in _consecutive(sorted(joins)):
        out += pairs[done:first]
        out.append((values[first], values[last + 1]))
        done = last + 2
    out += pairs[done:]
    return out


def _consecutive(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers as (first, last) of each run of consecutive ones."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] + 1 == n:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


_cache: dict[str, tuple[FileId, int, ListContent, _Kept | None]] = {}
_lock = threading.Lock()


def read_list(path: str, limit: int) -> ListContent:
    """The content of the list file at ``path`` (absolute), read again only if it changed.

    Raises OSError when the file cannot be read, ValueError when it is too large.
    """
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = file_id(st)
        with _lock:
            cached = _cache.get(path)
        if cached is not None and cached[0] == key and cached[1] == limit:
            return cached[2]
        if st.st_size > MAX_LIST_BYTES:
            raise ValueError(f"larger than {MAX_LIST_BYTES // 2**20} MiB: too large for a list")
        data = fh.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:  # grew while being read
        raise ValueError(f"larger than {MAX_LIST_BYTES // 2**20} MiB: too large for a list")
    previous = (cached[2], cached[3]) if cached is not None and cached[1] == limit and cached[3] is not None else None
    content, kept = _parsed(data, limit, previous)
    with _lock:
        _cache[path] = (key, limit, content, kept)
    return content


def forget_except(paths: Iterable[str]) -> None:
    """Drop cached lists a policy no longer names (their intervals can be large)."""
    keep = set(paths)
    with _lock:
        for path in [p for p in _cache if p not in keep]:
            del _cache[path]
