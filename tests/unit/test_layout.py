"""Imports flow one way: model <- kernel, model <- smtp, both <- daemon <- cli.

The two flows of README "Layout" (policy -> compiler -> plan -> kernel, and policy -> HAT index
-> SMTP) meet only in ``netpolicy.daemon`` and the CLI. Read from the source with ``ast``, so an
import hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "netpolicy"

# What each part may import from netpolicy, besides itself.
ALLOWED = {
    "model": set(),
    "kernel": {"model"},
    "smtp": {"model"},
    "daemon": {"model", "kernel", "smtp"},
}


def _imports(path: Path) -> set[str]:
    """The netpolicy parts (``model``, ``kernel``, ...) a module imports."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        parts.update(name.split(".")[1] for name in names if name.startswith("netpolicy.") and name.count(".") >= 1)
    return parts


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_a_part_imports_only_what_lies_below_it(part: str) -> None:
    wrong = {
        str(path.relative_to(PACKAGE.parent)): sorted(found - ALLOWED[part] - {part})
        for path in sorted((PACKAGE / part).rglob("*.py"))
        if (found := _imports(path)) - ALLOWED[part] - {part}
    }
    assert not wrong, wrong


def test_every_module_lives_in_a_part() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py", "cli.py"})
    assert not loose, f"modules outside model/, kernel/, smtp/, daemon/: {loose}"
