"""The kernel plan: what the compiler hands to a kernel backend.

Kept apart from the compiler so that backends, the reconciler and the CLI depend on a small,
stable value type rather than on how it is computed. A plan is immutable; a new policy
generation produces a new plan, and backends diff plans against what they read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netpolicy.model.intervals import Interval, cidr_texts, covers


@dataclass(frozen=True)
class UserlandOnly:
    """A sender-group entry that resolves to TCPREFUSE but cannot be decided in the kernel."""

    sender_group: str
    entry: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"sender_group": self.sender_group, "entry": self.entry, "reason": self.reason}


@dataclass(frozen=True)
class ListenerPlan:
    """Refuse sets for one listener.

    ``refuse4``/``refuse6`` are sorted, disjoint ranges with touching ones merged: the form
    nftables interval sets take as they are. CIDR text is made from them only for output: the
    JSON form lists the minimal sorted CIDRs (single hosts with their prefix, ``/32``,
    ``/128``), and the ipset backend, whose ``hash:net`` sets take CIDRs, splits them itself.
    ``address`` is the listener's bind address: ``0.0.0.0`` matches every IPv4 destination,
    ``::`` every destination of both families (a dual-stack socket), anything else only itself.
    ``kernel`` is False when the listener has kernel enforcement off; its sets are then empty
    and backends install nothing for it.
    """

    name: str
    address: str
    port: int
    kernel: bool
    refuse4: tuple[Interval, ...] = ()
    refuse6: tuple[Interval, ...] = ()
    userland_only: tuple[UserlandOnly, ...] = ()

    def refuses(self, family: int, value: int) -> bool:
        """Would the kernel refuse this address (``trace``'s "enforced in kernel")?"""
        return covers(self.refuse4 if family == 4 else self.refuse6, value)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "kernel": self.kernel,
            "refuse": {"ipv4": cidr_texts(self.refuse4), "ipv6": cidr_texts(self.refuse6)},
            "userland_only": [u.as_json() for u in self.userland_only],
        }


@dataclass(frozen=True)
class KernelPlan:
    """The whole desired kernel state for one policy generation."""

    generation: str
    listeners: tuple[ListenerPlan, ...] = field(default_factory=tuple)

    def kernel_listeners(self) -> tuple[ListenerPlan, ...]:
        """Listeners whose refusals the kernel enforces."""
        return tuple(lp for lp in self.listeners if lp.kernel)

    def as_json(self) -> dict[str, object]:
        return {"generation": self.generation, "listeners": [lp.as_json() for lp in self.listeners]}
