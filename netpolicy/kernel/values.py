"""Values shared by every backend: diffs, status, promotions, learned refusals, errors.

Backends differ in how they store a refuse set (nftables interval elements, ipset ``hash:net``
CIDRs) but the diff, the human ``+ 192.0.2.0/24 -> IncomingMail refuse4`` lines and the JSON
forms are the same, so the CLI and the reconciler never care which backend they talk to.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from netpolicy.model.intervals import Interval


class KernelError(RuntimeError):
    """The kernel layer cannot do what was asked (tool missing, kernel refused, bad input)."""


class MissingCapability(KernelError):
    """Reading or changing netfilter state needs CAP_NET_ADMIN in the current network namespace."""

    def __init__(self, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            "netpolicy needs the CAP_NET_ADMIN capability to read or change netfilter state"
            f"{extra}; run it as root or grant it cap_net_admin"
        )


def role_label(role: str, family: int) -> str:
    """``refuse4`` / ``promoted6``: the name a set goes by in diffs, status and rule comments."""
    return f"{role}{family}"


@dataclass(frozen=True)
class SetDelta:
    """Elements to add to / remove from one refuse set to reach the plan."""

    listener: str
    family: int
    add: frozenset[Interval] = frozenset()
    remove: frozenset[Interval] = frozenset()

    @property
    def label(self) -> str:
        return role_label("refuse", self.family)

    def lines(self, limit: int | None = None) -> list[str]:
        """``+``/``-`` lines in address order; with ``limit``, only the first ones are made."""
        def first(items: frozenset[Interval]) -> list[Interval]:
            return sorted(items) if limit is None else heapq.nsmallest(limit, items)

        out = [f"+ {c} -> {self.listener} {self.label}" for i in first(self.add) for c in i.cidrs()]
        out += [f"- {c} -> {self.listener} {self.label}" for i in first(self.remove) for c in i.cidrs()]
        return out if limit is None else out[:limit]

    def as_json(self) -> dict[str, object]:
        return {
            "listener": self.listener,
            "set": self.label,
            "add": [c for i in sorted(self.add) for c in i.cidrs()],
            "remove": [c for i in sorted(self.remove) for c in i.cidrs()],
        }


@dataclass(frozen=True)
class Problem:
    """A structural difference: something missing, changed by someone else, or left over.

    ``code`` is stable for machines (``missing-table``, ``missing-rule``, ``modified-rule``,
    ``unexpected-rule``, ``missing-set``, ``modified-set``, ``unexpected-set``,
    ``missing-counter``, ``unexpected-counter``, ``missing-chain``, ``modified-chain``,
    ``missing-jump``, ``extra-jump``, ``generation``); ``subject`` names the object.
    """

    code: str
    subject: str
    detail: str = ""

    def line(self) -> str:
        return f"! {self.code.replace('-', ' ')}: {self.subject}" + (f" ({self.detail})" if self.detail else "")

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class KernelDiff:
    """Desired plan against the running kernel, as computed by one backend."""

    backend: str
    generation: str
    kernel_generation: str | None
    problems: tuple[Problem, ...] = ()
    sets: tuple[SetDelta, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.problems and not self.sets

    @property
    def element_changes(self) -> int:
        return sum(len(d.add) + len(d.remove) for d in self.sets)

    def lines(self, limit: int | None = None) -> list[str]:
        """Problems, then element changes; with ``limit``, at most that many (cheaply: a repair
        of a flushed 1M-entry table should not format a million lines to log twenty)."""
        out = [p.line() for p in self.problems]
        for delta in self.sets:
            if limit is not None and len(out) >= limit:
                break
            out += delta.lines(None if limit is None else limit - len(out))
        return out if limit is None else out[:limit]

    def as_json(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "in_sync": self.in_sync,
            "generation": self.generation,
            "kernel_generation": self.kernel_generation,
            "problems": [p.as_json() for p in self.problems],
            "sets": [d.as_json() for d in self.sets],
        }


@dataclass(frozen=True)
class Promotion:
    """A host the kernel holds in a listener's timed refuse set (pushed there at runtime), as
    read back from the kernel."""

    listener: str  # the listener's kernel id (see ``layout.listener_id``)
    address: str
    expires_in: float  # seconds left, as the kernel reports it


@dataclass(frozen=True)
class LearnedRefusal:
    """A host the kernel holds in a listener's ``learned`` set (a TCPREFUSE resting on DNS
    answers, see netpolicy.kernel.learning), as read back from the kernel."""

    listener: str  # the listener's kernel id (see ``layout.listener_id``)
    address: str
    expires_in: float  # seconds left, as the kernel reports it


@dataclass(frozen=True)
class ListenerStatus:
    name: str
    listener_id: str
    address: str | None
    port: int | None
    installed: bool
    set_sizes: Mapping[str, int] = field(default_factory=dict)
    refused: int = 0  # connection attempts refused (packets matched by the reject rule)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "listener_id": self.listener_id,
            "address": self.address,
            "port": self.port,
            "installed": self.installed,
            "sets": dict(self.set_sizes),
            "refused": self.refused,
        }


@dataclass(frozen=True)
class KernelStatus:
    backend: str
    generation: str | None
    listeners: tuple[ListenerStatus, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "generation": self.generation,
            "listeners": [ls.as_json() for ls in self.listeners],
        }

    def lines(self) -> list[str]:
        out = [f"backend: {self.backend}", f"generation: {self.generation or '(nothing installed)'}"]
        for ls in self.listeners:
            host = f"[{ls.address}]" if ls.address and ":" in ls.address else ls.address
            where = f"{host}:{ls.port}" if ls.address is not None else "(not in policy)"
            sizes = " ".join(f"{k}={v}" for k, v in sorted(ls.set_sizes.items()))
            state = "installed" if ls.installed else "not installed"
            out.append(f"{ls.name} {where} {state} refused={ls.refused} {sizes}".rstrip())
        return out
