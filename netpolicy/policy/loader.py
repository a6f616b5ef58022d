"""Load a policy file, keeping the line of every node so each error reads ``file:line: message``.

YAML is composed into nodes (libyaml's C parser when available), turned into plain data while a
path -> line map is recorded, then validated by the pydantic model and the reference rules.
Every problem found is reported at once; nothing is applied from a file that has any.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from netpolicy.policy.model import Policy
from netpolicy.policy.references import Path, Problem, reference_problems

DEFAULT_POLICY_PATH = "/etc/netpolicy/policy.yml"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class LocatedProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """A policy that must not be used; ``problems`` lists every reason with its line."""

    def __init__(self, problems: Sequence[LocatedProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Builder:
    """Node tree -> plain data, recording the 1-based line of each path (and of each key)."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.problems: list[tuple[int, str]] = []
        self._constructor = yaml.SafeLoader("")  # only used to resolve scalar values

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int)):
                    self.problems.append((key_node.start_mark.line + 1, "mapping keys must be plain scalars"))
                    continue
                if key in out:
                    self.problems.append((key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return None
        # Sender-group entries are text: YAML would read `10.` as the float 10.0.
        if path[:1] == ("sender_groups",) and len(path) == 3 and node.tag != "tag:yaml.org,2002:null":
            return node.value
        return self._constructor.construct_object(node)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and validate a policy file; raise PolicyError listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise PolicyError([LocatedProblem(name, 0, f"cannot read policy: {exc.strerror}")]) from None
    return parse_policy(text, name)


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise PolicyError([LocatedProblem(name, line, f"YAML: {exc.problem}")]) from None
    if node is None:
        raise PolicyError([LocatedProblem(name, 1, "the policy file is empty")])
    builder = _Builder()
    data = builder.build(node, ())
    located = [LocatedProblem(name, line, msg) for line, msg in builder.problems]
    if not isinstance(data, dict):
        raise PolicyError([*located, LocatedProblem(name, 1, "the policy must be a mapping")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        located += [_locate(name, builder.lines, _pydantic_problem(err)) for err in exc.errors()]
        raise PolicyError(located) from None
    located += [_locate(name, builder.lines, p) for p in reference_problems(policy)]
    if located:
        raise PolicyError(located)
    return policy


def _pydantic_problem(err: Any) -> Problem:
    loc = tuple(err["loc"])
    # Validator-internal location parts (e.g. the "function-before[...]" of a union) name no node.
    path = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith("function-"))
    field = ".".join(str(p) for p in path) or "policy"
    if err["type"] == "extra_forbidden":
        return Problem(path, f"unknown key {path[-1]!r}")
    if err["type"] == "missing":
        return Problem(path[:-1], f"missing key {path[-1]!r}")
    message = err["msg"].removeprefix("Value error, ")
    return Problem(path, f"{field}: {message}")


def _locate(name: str, lines: dict[Path, int], problem: Problem) -> LocatedProblem:
    path = problem.path
    while path and path not in lines:
        path = path[:-1]
    return LocatedProblem(name, lines.get(path, 1), problem.message)
