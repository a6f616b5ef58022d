"""Load a policy file, keeping the line of every node so each error reads ``file:line: message``.

The YAML is read into plain data with a path -> line map (``yamltree``, which bounds that work),
then validated by the pydantic model and the reference rules. Every problem found is reported at
once; nothing is applied from a file that has any.

``file:`` lists and ``country[...]`` entries are read once the document is valid and replaced
by the addresses they hold (``lists``, ``geoip``): the rest of netpolicy only meets address
sets. A list's problems read ``lists/drop.txt:LINE: message``, listed with the policy's own.

Bounds of its own: at most ``MAX_POLICY_BYTES`` of file (a 1M-entry sender group is 20.5 MiB),
and sender-group entries are parsed here rather than by pydantic, whose errors cost ~25 µs and
~2 KB each: 2M bad entries take 150 s and 7 GB there, 9 s and 0.6 GB here. Only
``MAX_REPORTED`` problems are listed, then a count. ``netpolicy validate`` of a 1M-entry group:
3.1 s of CPU and 309 MiB peak, against 10.3 s and 717 MiB composing a node tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from netpolicy.model.collector import collector_paused
from netpolicy.model.entries import (
    AddressSetEntry,
    CountryEntry,
    Entry,
    EntryError,
    ListFileEntry,
    parse_entry,
)
from netpolicy.model.geoip import CountryTable, GeoIPError, load_table
from netpolicy.model.lists import forget_except as forget_lists_except
from netpolicy.model.lists import read_list
from netpolicy.model.policy import Policy
from netpolicy.model.references import PolicyProblem, reference_problems
from netpolicy.model.yamltree import Refused, YamlData, read_yaml

MAX_POLICY_BYTES = 40 * 2**20
MAX_REPORTED = 100


class PolicyError(Exception):
    """A policy that must not be used; ``problems`` lists every reason with its line."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and validate a policy file; raise PolicyError listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError([PolicyProblem.at(name, 0, f"cannot read policy: {exc.strerror}")]) from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError([PolicyProblem.at(name, 0, f"policy larger than {MAX_POLICY_BYTES // 2**20} MiB: too large for one policy")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError([PolicyProblem.at(name, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")]) from None
    return parse_policy(text, name)


@collector_paused()
def parse_policy(text: str, name: str = "<policy>") -> Policy:
    try:
        read = read_yaml(text)
    except Refused as exc:
        raise PolicyError([PolicyProblem.at(name, exc.line, exc.message)]) from None
    data = read.data
    located = [PolicyProblem.at(name, line, msg) for line, msg in read.problems]
    if data is None:
        raise PolicyError([*located, PolicyProblem.at(name, 1, "the policy file is empty")])
    if not isinstance(data, dict):
        raise PolicyError([*located, PolicyProblem.at(name, 1, "the policy must be a mapping")])
    entry_problems, unlisted, kept, outside = _parse_entries(data)
    located += [_locate(name, read, p) for p in entry_problems]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = (_pydantic_problem(err) for err in exc.errors(include_url=False, include_input=False))
        located += [_locate(name, read, p) for p in problems if p.path not in read.unreadable]
        raise PolicyError(_capped(located, unlisted)) from None
    located += [_locate(name, read, _original_index(p, kept)) for p in reference_problems(policy)]
    policy, outside_problems, more = _read_outside(policy, name, outside)
    located += [p if p.file else _locate(name, read, _original_index(p, kept)) for p in outside_problems]
    if located:
        raise PolicyError(_capped(located, unlisted + more))
    return policy


def _read_outside(policy: Policy, name: str, outside: list[tuple[str, int]]) -> tuple[Policy, list[PolicyProblem], int]:
    """Replace every ``file:`` and ``country[...]`` entry (at ``outside``) by the addresses its
    file or the GeoIP database holds. Paths are relative to the policy file's directory, and a
    list's problems are shown under the path as the policy names it (``lists/drop.txt:7: ...``).
    Returns the policy, the problems (a list's lines already located) and how many more."""
    home = os.path.dirname(os.path.abspath(name))
    shown_home = os.path.dirname(name)
    problems: list[PolicyProblem] = []
    unlisted = 0
    table: CountryTable | None = None
    if policy.geoip is not None:
        try:
            table = load_table(os.path.normpath(os.path.join(home, policy.geoip.database)))
            policy.geoip._table = table
        except GeoIPError as exc:
            problems.append(PolicyProblem(("geoip", "database"), f"geoip.database: {exc}"))
    read: list[str] = []
    groups: dict[str, list[Entry]] = {}
    for group, i in outside:
        entries = groups.setdefault(group, list(policy.sender_groups[group]))
        entry = entries[i]
        if isinstance(entry, CountryEntry):
            if table is not None:
                entries[i] = table.entry(entry.text, entry.codes)
            continue
        assert isinstance(entry, ListFileEntry)
        path, shown = os.path.join(home, entry.path), os.path.join(shown_home, entry.path)
        try:
            content = read_list(path, MAX_REPORTED)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            problems.append(PolicyProblem(("sender_groups", group, i), f"sender_groups.{_name(group)}.{i}: cannot read {shown}: {reason}"))
            continue
        problems += [PolicyProblem.at(shown, line, message) for line, message in content.problems]
        unlisted += content.unlisted
        read.append(os.path.normpath(path))
        entries[i] = AddressSetEntry(entry.text, content.v4, content.v6, content.digest, read[-1])
    forget_lists_except(read)
    if groups:
        policy = policy.model_copy(update={"sender_groups": {**policy.sender_groups, **groups}})
    return policy, problems, unlisted


def source_files(policy: Policy) -> tuple[str, ...]:
    """Absolute paths of every file the policy was read from besides itself: its ``file:``
    lists and its GeoIP database (what serve watches to reload when one changes)."""
    paths = {e.source for entries in policy.sender_groups.values() for e in entries if e.__class__ is AddressSetEntry}
    if policy.geoip is not None and policy.geoip.table is not None:
        paths.add(policy.geoip.table.path)
    paths.discard("")
    return tuple(sorted(paths))


def _parse_entries(data: dict[Any, Any]) -> tuple[list[PolicyProblem], int, dict[str, list[int]], list[tuple[str, int]]]:
    """Parse sender-group entries in place; a bad one is a problem and is left out.

    Returns the first ``MAX_REPORTED`` problems, how many more there are, for each group that
    lost entries the file index of each kept one, and where (group, index among the parsed)
    the ``file:`` and ``country[...]`` entries are, whose addresses are read after validation.
    """
    groups = data.get("sender_groups")
    if not isinstance(groups, dict):
        return [], 0, {}, []
    problems: list[PolicyProblem] = []
    unlisted = 0
    kept: dict[str, list[int]] = {}
    outside: list[tuple[str, int]] = []
    for group, texts in groups.items():
        if not isinstance(texts, list):
            continue
        parsed: list[Entry] = []
        indexes: list[int] = []
        for i, text in enumerate(texts):
            try:
                entry = parse_entry(text)
                if entry.__class__ in _OUTSIDE:
                    outside.append((group, len(parsed)))
                parsed.append(entry)
                indexes.append(i)
            except EntryError as exc:
                if len(problems) < MAX_REPORTED:
                    problems.append(PolicyProblem(("sender_groups", group, i), f"sender_groups.{_name(group)}.{i}: {exc}"))
                else:
                    unlisted += 1
        if len(parsed) < len(texts):
            kept[group] = indexes
        groups[group] = parsed
    return problems, unlisted, kept, outside


_OUTSIDE = frozenset({ListFileEntry, CountryEntry})


def _original_index(problem: PolicyProblem, kept: dict[str, list[int]]) -> PolicyProblem:
    path = problem.path
    if len(path) >= 3 and path[0] == "sender_groups" and path[1] in kept and isinstance(path[2], int):
        return PolicyProblem((*path[:2], kept[str(path[1])][path[2]], *path[3:]), problem.message)
    return problem


def _capped(located: list[PolicyProblem], unlisted: int) -> list[PolicyProblem]:
    """The first ``MAX_REPORTED`` problems, then one line counting the rest."""
    more = max(len(located) - MAX_REPORTED, 0) + unlisted
    if not more:
        return located
    last = located[min(MAX_REPORTED, len(located)) - 1]
    return [*located[:MAX_REPORTED], PolicyProblem.at(last.file, last.line, f"{more:,} more problems not listed")]


def _pydantic_problem(err: Any) -> PolicyProblem:
    loc = tuple(err["loc"])
    # Validator-internal location parts (e.g. the "function-before[...]" of a union) name no node.
    path = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith("function-"))
    field = ".".join(_name(p) for p in path) or "policy"
    if err["type"] == "extra_forbidden":
        return PolicyProblem(path, f"unknown key {path[-1]!r}")
    if err["type"] == "missing":
        return PolicyProblem(path[:-1], f"missing key {path[-1]!r}")
    message = err["msg"].removeprefix("Value error, ")
    return PolicyProblem(path, f"{field}: {message}")


def _name(part: object) -> str:
    text = str(part)
    return text if text.isprintable() else repr(text)


def _locate(name: str, read: YamlData, problem: PolicyProblem) -> PolicyProblem:
    return problem.located(name, read.line(problem.path))
