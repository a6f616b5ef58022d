"""ipset through its command-line tool: bulk changes in one ``ipset restore``, reads, headers.

``ipset restore`` sends a whole script in one process and one netlink conversation (measured:
100k entries in 0.36 s, against 35 s with one request per entry), and ``swap`` replaces a set's
contents atomically while rules keep referencing it by name. The tool is run from the calling
thread, so it works in that thread's network namespace.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netpolicy.kernel.values import KernelError, MissingCapability

OWNED_PREFIX = "netpolicy"


@dataclass(frozen=True)
class SetHeader:
    name: str
    type: str
    family: str
    maxelem: int
    entries: int
    timeout: bool


def run(args: Sequence[str], input: str | None = None) -> str:
    try:
        proc = subprocess.run(["ipset", *args], capture_output=True, text=True, input=input, check=False)
    except FileNotFoundError as exc:
        raise KernelError("the ipset tool is not installed") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "Operation not permitted" in err or "Permission denied" in err:
            raise MissingCapability(f"ipset: {err}")
        raise KernelError(f"ipset {' '.join(args[:1])} failed: {err}")
    return proc.stdout


def headers() -> dict[str, SetHeader]:
    """Headers of the sets whose names begin with ``netpolicy`` (others are not ours)."""
    out: dict[str, SetHeader] = {}
    for block in run(["list", "-t"]).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
        name = fields.get("Name", "")
        if not name.startswith(OWNED_PREFIX):
            continue
        header = fields.get("Header", "")
        family = re.search(r"family (\S+)", header)
        maxelem = re.search(r"maxelem (\d+)", header)
        out[name] = SetHeader(
            name, fields.get("Type", ""), family.group(1) if family else "",
            int(maxelem.group(1)) if maxelem else 0, int(fields.get("Number of entries", "0")),
            " timeout " in f" {header} ",
        )
    return out


def names() -> set[str]:
    """Names of the sets that are ours: a cheap listing (no per-set entry count)."""
    return {name for name in run(["list", "-n"]).split() if name.startswith(OWNED_PREFIX)}


def members(name: str) -> list[tuple[str, float | None]]:
    """(entry, seconds left or None) for every member of one of our sets."""
    out: list[tuple[str, float | None]] = []
    prefix = f"add {name} "
    for line in run(["save", name]).splitlines():
        if line.startswith(prefix):
            parts = line[len(prefix):].split()
            timeout = float(parts[parts.index("timeout") + 1]) if "timeout" in parts else None
            out.append((parts[0], timeout))
    return out


def restore(lines: Sequence[str]) -> None:
    """Run a script of ipset commands in one ``ipset restore`` (stops at the first error)."""
    if lines:
        run(["restore"], input="\n".join(lines) + "\n")
