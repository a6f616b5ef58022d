"""The backend interface: what the CLI and the reconciler may ask of a kernel backend.

Every backend owns a fixed, named set of kernel objects (SPEC.md section 4) and never reads
anything else as its own nor changes it. ``diff`` always reads the kernel in full; ``quick_diff``
is what the reconciler calls every second: exact for structure (tables, chains, rules, jump,
generation marker) but, for elements, it trusts what this process last read or wrote while the
dataplane shows no change since (netpolicy.kernel.engine): on nftables the same ruleset
generation, on ipset the same set sizes, which is why the reconciler also runs a full ``diff``
every full-sync period.
"""

from __future__ import annotations

import functools
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar, Concatenate, ParamSpec, TypeVar

from netpolicy.kernel.values import (
    KernelDiff,
    KernelStatus,
    LearnedRefusal,
    MissingCapability,
    Promotion,
)
from netpolicy.model.plan import KernelPlan

CAP_NET_ADMIN = 12

P = ParamSpec("P")
R = TypeVar("R")
B = TypeVar("B", bound="Backend")


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def require_net_admin() -> None:
    if not has_net_admin():
        raise MissingCapability("the effective capability set lacks it")


def netns_id() -> int:
    """Inode of the calling thread's network namespace: what a cached kernel state belongs to."""
    return os.stat(f"/proc/self/task/{_gettid()}/ns/net").st_ino


def _gettid() -> int:
    return int(os.readlink("/proc/thread-self").rsplit("/", 1)[1])


def serialized(fn: Callable[Concatenate[B, P], R]) -> Callable[Concatenate[B, P], R]:
    """Run a backend method under the backend's lock: serve calls a backend from several
    threads (reconciler, reloads, promotions, status), and the backend's memory of what it
    last wrote must change under one writer at a time."""

    @functools.wraps(fn)
    def wrapper(self: B, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper


class Backend(ABC):
    """One way of enforcing kernel refusals (nftables or iptables+ipset)."""

    name: ClassVar[str]
    # Longest promotion the kernel can hold in one go; the reconciler renews longer ones.
    max_promote_seconds: ClassVar[int]

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @abstractmethod
    def diff(self, plan: KernelPlan) -> KernelDiff:
        """Desired plan against a full read of everything this backend owns."""

    @abstractmethod
    def quick_diff(self, plan: KernelPlan) -> KernelDiff:
        """Cheap check for the reconciler (see the module docstring)."""

    @abstractmethod
    def apply(self, plan: KernelPlan) -> KernelDiff:
        """Make the kernel match ``plan`` without an open window; return what was changed.

        Promoted (timed) elements are left alone: the plan does not contain them. Learned
        refusals belong to the policy generation the rules carry: when the rules found do not
        all carry ``plan``'s generation, the learned sets are emptied with the change.
        """

    @abstractmethod
    def flush(self) -> bool:
        """Remove everything this backend owns; True if anything was there."""

    @abstractmethod
    def status(self, plan: KernelPlan | None = None) -> KernelStatus:
        """Generation, set sizes and refusal counters, per listener found in the kernel or plan."""

    @abstractmethod
    def promote(self, listener: str, address: str, seconds: float) -> None:
        """Refuse ``address`` on ``listener`` (name) for ``seconds``, replacing any earlier timeout."""

    @abstractmethod
    def promoted(self) -> list[Promotion]:
        """Hosts currently in the timed sets, with the time they have left."""

    @abstractmethod
    def learn(self, listener: str, hosts: Mapping[str, int]) -> None:
        """Refuse each address of ``hosts`` on ``listener`` (name) for its seconds, in the
        listener's learned sets. An address already there keeps its time (nftables) or takes
        the one given (ipset): the caller gives the time left of what it learned, so either
        ends within the answers' TTL."""

    @abstractmethod
    def learned(self) -> list[LearnedRefusal]:
        """Hosts currently in the learned sets, with the time they have left."""
