"""Load a policy file, keeping the line of every node so each error reads ``file:line: message``.

The YAML event stream (libyaml's C parser when available) is turned into plain data by one
iterative loop that records a path -> line map, then validated by the pydantic model and the
reference rules. Every problem found is reported at once; nothing is applied from a file that has
any.

The file is untrusted input to a daemon that reloads it, so the loader bounds its own work:
- anchors and aliases are refused (a policy never needs them): expanded, a 377-byte alias bomb
  runs past 2.4 GB in 60 s, and a recursive alias never ends;
- at most ``MAX_POLICY_BYTES`` of file, ``MAX_NODES`` values and ``MAX_DEPTH`` levels of nesting.
  A 1M-entry sender group (20.5 MiB, 1,000,066 values, depth 4) is a real policy and loads
  (``netpolicy validate``: 6.2 s and 478 MiB peak, against 10.3 s and 717 MiB composing a node
  tree); the caps are about twice that;
- at most ``MAX_STRUCTURE`` values outside sender-group entries (40,000 RAT rows), and entries
  are parsed here, not by pydantic: every pydantic error costs ~25 µs and ~2 KB, so 2M bad
  entries take 150 s and 7 GB there. Only ``MAX_REPORTED`` problems are listed, then a count;
- only the YAML core tags; ``<<`` merges are refused like aliases; plain timestamps stay text (no
  policy value is a date, and ``2024-13-45`` would not construct); a value YAML cannot construct
  (an int of 5,000 digits, ``!!bool maybe``) is a located problem.
Reading events rather than composing a node tree is also faster: libyaml's composer resolves
every scalar's tag in Python; events for 1M entries parse in 1.3 s against 6.3 s to compose.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from netpolicy.policy.entries import Entry, EntryError, parse_entry
from netpolicy.policy.model import Policy
from netpolicy.policy.references import Path, Problem, reference_problems

DEFAULT_POLICY_PATH = "/etc/netpolicy/policy.yml"
MAX_POLICY_BYTES = 40 * 2**20
MAX_NODES = 2_000_000
MAX_STRUCTURE = 200_000
MAX_DEPTH = 32
MAX_REPORTED = 100
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_NULLS = {"", "~", "null", "Null", "NULL"}
_NO_KEY, _SKIP = object(), object()


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


class _Refused(Exception):
    """A structural problem after which the rest of the file is not read."""

    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


@dataclass
class _Frame:
    """A mapping or sequence being filled. ``path`` is None inside a mapping key or a skipped
    value (nothing there gets a line); ``key`` is a mapping's pending key."""

    value: Any
    path: Path | None
    line: int
    key: Any = _NO_KEY


class _Builder:
    """Event stream -> plain data, recording the 1-based line of each path (and of each key)."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.unreadable: set[Path] = set()  # values already reported; pydantic need not repeat them
        self._yaml = yaml.SafeLoader("")  # its resolver and scalar constructors only

    def build(self, text: str) -> Any:
        stack: list[_Frame] = []
        result: Any = None
        nodes = structure = documents = 0
        for event in yaml.parse(text, Loader=_Loader):
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            if isinstance(event, yaml.CollectionEndEvent):
                frame = stack.pop()
                if stack:
                    self._add(stack[-1], frame.value, frame.line)
                else:
                    result = frame.value
            elif isinstance(event, yaml.NodeEvent):
                if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                    raise _Refused(line, "anchors (&name) and aliases (*name) are not supported in a policy: write the value out")
                nodes += 1
                if nodes > MAX_NODES:
                    raise _Refused(line, f"more than {MAX_NODES:,} values: too large for one policy")
                parent = stack[-1] if stack else None
                path = _child_path(parent)
                if path is not None:
                    self.lines.setdefault(path, line)
                if path is None or len(path) != 3 or path[0] != "sender_groups":
                    structure += 1
                    if structure > MAX_STRUCTURE:
                        raise _Refused(line, f"more than {MAX_STRUCTURE:,} values outside sender-group entries: too large for one policy")
                if isinstance(event, yaml.ScalarEvent):
                    value = self._scalar(event, path, line)
                    if parent is None:
                        result = value
                    else:
                        self._add(parent, value, line)
                elif isinstance(event, yaml.CollectionStartEvent):
                    if len(stack) >= MAX_DEPTH:
                        raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels")
                    is_map = isinstance(event, yaml.MappingStartEvent)
                    tag = event.tag
                    if tag is not None and tag != "!" and tag != _CORE + ("map" if is_map else "seq"):
                        raise _Refused(line, f"unsupported tag {_short_tag(tag)}: a policy uses plain YAML values")
                    stack.append(_Frame({} if is_map else [], path, line))
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Refused(line, "a policy file holds one YAML document (a second one starts here)")
        return result

    def _add(self, parent: _Frame, value: Any, line: int) -> None:
        if isinstance(parent.value, list):
            parent.value.append(value)
        elif parent.key is _NO_KEY:
            if value is _SKIP or not isinstance(value, (str, int)):
                if value is not _SKIP:
                    self.problems.append((line, "mapping keys must be plain scalars"))
                parent.key = _SKIP
                return
            if value in parent.value:
                self.problems.append((line, f"duplicate key {value!r}"))
            parent.key = value
            if parent.path is not None:
                self.lines[(*parent.path, value)] = line  # a key's own line wins
        else:
            if parent.key is not _SKIP:
                parent.value[parent.key] = value
            parent.key = _NO_KEY

    def _scalar(self, event: yaml.ScalarEvent, path: Path | None, line: int) -> Any:
        tag = event.tag
        if tag is not None and tag != "!" and tag not in _SCALAR_TAGS:
            raise _Refused(line, f"unsupported tag {_short_tag(tag)}: a policy uses plain YAML values")
        # Sender-group entries are text: YAML would read `10.` as the float 10.0.
        if tag is None and path is not None and len(path) == 3 and path[0] == "sender_groups":
            return None if event.implicit[0] and event.value in _NULLS else event.value
        if tag is None or tag == "!":
            tag = self._yaml.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _CORE + "merge":
                self.problems.append((line, "merge keys (<<) are not supported in a policy: write the keys out"))
                return _SKIP
        construct = self._yaml.yaml_constructors.get(tag) if tag in _SCALAR_TAGS else None
        if construct is None:  # no policy value is a timestamp or a YAML 1.1 "=": keep the text
            return event.value
        try:
            return construct(self._yaml, yaml.ScalarNode(tag, event.value, style=event.style))
        except (KeyError, ValueError, OverflowError, yaml.YAMLError) as exc:
            detail = "" if isinstance(exc, KeyError) else f": {_clip(str(exc), 80)}"  # KeyError: a !!bool of no YAML boolean
            self.problems.append((line, f"cannot read {_clip(event.value)} as {_short_tag(tag)}{detail}"))
            if path is not None:
                self.unreadable.add(path)
            return event.value


def _child_path(parent: _Frame | None) -> Path | None:
    """Path of the node about to start; None for a mapping key or inside one."""
    if parent is None:
        return ()
    if parent.path is None:
        return None
    if isinstance(parent.value, list):
        return (*parent.path, len(parent.value))
    if parent.key is _NO_KEY or parent.key is _SKIP:
        return None
    return (*parent.path, parent.key)


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


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
    builder = _Builder()
    try:
        data = builder.build(text)
    except _Refused as exc:
        raise PolicyError([LocatedProblem(name, exc.line, exc.message)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([LocatedProblem(name, _yaml_error_line(exc, text), f"YAML: {_yaml_problem(exc)}")]) from None
    located = [LocatedProblem(name, line, msg) for line, msg in builder.problems]
    if data is None:
        raise PolicyError([*located, LocatedProblem(name, 1, "the policy file is empty")])
    if not isinstance(data, dict):
        raise PolicyError([*located, LocatedProblem(name, 1, "the policy must be a mapping")])
    entry_problems, unlisted, kept = _parse_entries(data)
    located += [_locate(name, builder.lines, p) for p in entry_problems]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = (_pydantic_problem(err) for err in exc.errors(include_url=False, include_input=False))
        located += [_locate(name, builder.lines, p) for p in problems if p.path not in builder.unreadable]
        raise PolicyError(_capped(located, unlisted)) from None
    located += [_locate(name, builder.lines, _original_index(p, kept)) for p in reference_problems(policy)]
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


def _yaml_error_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    if isinstance(exc, yaml.reader.ReaderError):  # libyaml counts bytes of the UTF-8 text
        return text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") + 1
    return 1


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"character U+{code:04X} is not allowed in YAML text"
    if isinstance(exc, yaml.MarkedYAMLError):
        return str(exc.problem)
    return str(exc).splitlines()[0]


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
