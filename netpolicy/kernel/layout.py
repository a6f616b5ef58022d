"""What a plan means for the kernel, independent of the backend.

Both backends install, per kernel-enforced listener and per address family the listener can
receive: one static refuse set (the plan's CIDRs), one timed set for hosts promoted at runtime,
and one rule matching each set. A listener bound to ``0.0.0.0`` or an IPv4 address receives only
IPv4, one bound to an IPv6 address only IPv6, one bound to ``::`` both (a dual-stack socket); a
refuse list for a family the listener cannot receive is left out, since a rule for it could only
hit some other service on the same port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from netpolicy.kernel.values import KernelError, role_label
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan, ListenerPlan

# ipset names are limited to 31 characters: "netpolicy-" + id + "-r4" must fit.
MAX_ID = 18
_PLAIN_ID = re.compile(rf"^[A-Za-z0-9_]{{1,{MAX_ID}}}$")
COMMENT_PREFIX = "netpolicy"


@dataclass(frozen=True)
class OwnedSet:
    """A set a backend keeps for one listener and address family; ``kind`` says what it holds
    (each backend has its own kinds, e.g. hosts / networks / promoted, or refuse / promoted)."""

    name: str
    lid: str
    listener: str
    kind: str
    family: int


def listener_id(name: str) -> str:
    """A short, kernel-safe name for a listener, stable across runs.

    Plain names (letters, digits, underscore, up to 18 characters) are used as they are so that
    ``nft list`` and ``ipset list`` stay readable; anything else gets a sanitized prefix plus a
    hash of the full name, which always contains a ``-`` and so never collides with a plain name.
    """
    if _PLAIN_ID.match(name):
        return name
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", name)[:11]
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class ListenerLayout:
    """One kernel-enforced listener as the backends see it."""

    plan: ListenerPlan
    lid: str
    families: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def port(self) -> int:
        return self.plan.port

    def daddr(self, family: int) -> str | None:
        """Destination address to match for ``family``; None means any destination."""
        if self.plan.address in ("0.0.0.0", "::"):
            return None
        return str(ipaddress.ip_address(self.plan.address))

    def refuse(self, family: int) -> tuple[Interval, ...]:
        return self.plan.refuse4 if family == 4 else self.plan.refuse6

    def rule_key(self, role: str, family: int) -> str:
        """The part of a rule comment that identifies the rule (the generation follows it)."""
        return f"{COMMENT_PREFIX} {self.lid} {role_label(role, family)}"


def families_for(address: str) -> tuple[int, ...]:
    if address == "::":
        return (4, 6)
    try:
        return (ipaddress.ip_address(address).version,)
    except ValueError as exc:
        raise KernelError(f"listener address {address!r} is not an IP address") from exc


def layout(plan: KernelPlan) -> tuple[ListenerLayout, ...]:
    """The kernel-enforced listeners of ``plan``; raises if two of them would share an id."""
    out: list[ListenerLayout] = []
    seen: dict[str, str] = {}
    for lp in plan.kernel_listeners():
        lid = listener_id(lp.name)
        if lid in seen:
            raise KernelError(f"listeners {seen[lid]!r} and {lp.name!r} map to the same kernel id {lid!r}")
        seen[lid] = lp.name
        out.append(ListenerLayout(lp, lid, families_for(lp.address)))
    return tuple(out)


def rule_comment(key: str, generation: str) -> str:
    return f"{key} gen={generation}"


def split_comment(comment: str) -> tuple[str, str | None]:
    """(rule key, generation) from a rule comment written by ``rule_comment``."""
    key, sep, gen = comment.rpartition(" gen=")
    return (key, gen) if sep else (comment, None)
