"""Load a policy file, keeping the line of every node so each error reads ``file:line: message``.

The YAML is read into plain data with a path -> line map (``yamltree``, which bounds that work),
then validated by the pydantic model and the reference rules. Every problem found is reported at
once; nothing is applied from a file that has any.

Bounds of its own: at most ``MAX_POLICY_BYTES`` of file (a 1M-entry sender group is 20.5 MiB),
and sender-group entries are parsed here rather than by pydantic, whose errors cost ~25 µs and
~2 KB each: 2M bad entries take 150 s and 7 GB there, 9 s and 0.6 GB here. Only
``MAX_REPORTED`` problems are listed, then a count. ``netpolicy validate`` of a 1M-entry group:
6.2 s and 478 MiB peak, against 10.3 s and 717 MiB composing a node tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from netpolicy.model.entries import Entry, EntryError, parse_entry
from netpolicy.model.policy import Policy
from netpolicy.model.references import Path, Problem, reference_problems
from netpolicy.model.yamltree import Refused, read_yaml

DEFAULT_POLICY_PATH = "/etc/netpolicy/policy.yml"
MAX_POLICY_BYTES = 40 * 2**20
MAX_REPORTED = 100


@dataclass(frozen=True)
class LocatedProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        # One problem, one line: a CR or LF the file put into a message must not start another.
        message = self.message if self.message.isprintable() else self.message.encode("unicode_escape").decode()
        return f"{self.file}:{self.line}: {message}"


class PolicyError(Exception):
    """A policy that must not be used; ``problems`` lists every reason with its line."""

    def __init__(self, problems: Sequence[LocatedProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and validate a policy file; raise PolicyError listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError([LocatedProblem(name, 0, f"cannot read policy: {exc.strerror}")]) from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError([LocatedProblem(name, 0, f"policy larger than {MAX_POLICY_BYTES // 2**20} MiB: too large for one policy")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError([LocatedProblem(name, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")]) from None
    return parse_policy(text, name)


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    try:
        read = read_yaml(text)
    except Refused as exc:
        raise PolicyError([LocatedProblem(name, exc.line, exc.message)]) from None
    data = read.data
    located = [LocatedProblem(name, line, msg) for line, msg in read.problems]
    if data is None:
        raise PolicyError([*located, LocatedProblem(name, 1, "the policy file is empty")])
    if not isinstance(data, dict):
        raise PolicyError([*located, LocatedProblem(name, 1, "the policy must be a mapping")])
    entry_problems, unlisted, kept = _parse_entries(data)
    located += [_locate(name, read.lines, p) for p in entry_problems]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = (_pydantic_problem(err) for err in exc.errors(include_url=False, include_input=False))
        located += [_locate(name, read.lines, p) for p in problems if p.path not in read.unreadable]
        raise PolicyError(_capped(located, unlisted)) from None
    located += [_locate(name, read.lines, _original_index(p, kept)) for p in reference_problems(policy)]
    if located:
        raise PolicyError(_capped(located, unlisted))
    return policy


def _parse_entries(data: dict[Any, Any]) -> tuple[list[Problem], int, dict[str, list[int]]]:
    """Parse sender-group entries in place; a bad one is a problem and is left out.

    Returns the first ``MAX_REPORTED`` problems, how many more there are, and for each group that
    lost entries the file index of each kept one.
    """
    groups = data.get("sender_groups")
    if not isinstance(groups, dict):
        return [], 0, {}
    problems: list[Problem] = []
    unlisted = 0
    kept: dict[str, list[int]] = {}
    for group, texts in groups.items():
        if not isinstance(texts, list):
            continue
        parsed: list[Entry] = []
        indexes: list[int] = []
        for i, text in enumerate(texts):
            try:
                parsed.append(parse_entry(text))
                indexes.append(i)
            except EntryError as exc:
                if len(problems) < MAX_REPORTED:
                    problems.append(Problem(("sender_groups", group, i), f"sender_groups.{_name(group)}.{i}: {exc}"))
                else:
                    unlisted += 1
        if len(parsed) < len(texts):
            kept[group] = indexes
        groups[group] = parsed
    return problems, unlisted, kept


def _original_index(problem: Problem, kept: dict[str, list[int]]) -> Problem:
    path = problem.path
    if len(path) >= 3 and path[0] == "sender_groups" and path[1] in kept and isinstance(path[2], int):
        return Problem((*path[:2], kept[str(path[1])][path[2]], *path[3:]), problem.message)
    return problem


def _capped(located: list[LocatedProblem], unlisted: int) -> list[LocatedProblem]:
    """The first ``MAX_REPORTED`` problems, then one line counting the rest."""
    more = max(len(located) - MAX_REPORTED, 0) + unlisted
    if not more:
        return located
    last = located[min(MAX_REPORTED, len(located)) - 1]
    return [*located[:MAX_REPORTED], LocatedProblem(last.file, last.line, f"{more:,} more problems not listed")]


def _pydantic_problem(err: Any) -> Problem:
    loc = tuple(err["loc"])
    # Validator-internal location parts (e.g. the "function-before[...]" of a union) name no node.
    path = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith("function-"))
    field = ".".join(_name(p) for p in path) or "policy"
    if err["type"] == "extra_forbidden":
        return Problem(path, f"unknown key {path[-1]!r}")
    if err["type"] == "missing":
        return Problem(path[:-1], f"missing key {path[-1]!r}")
    message = err["msg"].removeprefix("Value error, ")
    return Problem(path, f"{field}: {message}")


def _name(part: object) -> str:
    text = str(part)
    return text if text.isprintable() else repr(text)


def _locate(name: str, lines: dict[Path, int], problem: Problem) -> LocatedProblem:
    path = problem.path
    while path and path not in lines:
        path = path[:-1]
    return LocatedProblem(name, lines.get(path, 1), problem.message)
