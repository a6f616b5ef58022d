"""The backend-neutral half of every backend: the dataplane cache, when it may stand for the
kernel, element deltas, set names and status assembly. The backends (nftables.py, iptables.py)
read and write their dataplane and decide the order of their writes; what to change is worked
out here, the same way for both.

Design goals, after Calico Felix's ``DeltaTracker`` and ``iptables.Table``:

- The desired state is a pure function of the plan (each backend's ``desired``), and a plan's
  refuse lists are sorted and immutable, so the delta between two generations of one list is
  found list against list (``delta.sorted_delta``) instead of by hashing both (~0.5 s).
- The dataplane cache (``DataplaneCache``) holds, per owned set, the elements as this process
  last read or wrote them, the refuse list they were written from, and the size the kernel
  reported; plus the dataplane generation it was taken at, when the dataplane has one.
- A cached set stands for the kernel's content only while the dataplane shows that nothing
  changed since: the same generation (nftables bumps its ruleset generation on every commit,
  anyone's), or, for a dataplane without one (ipset), the same size. A change of size is not
  needed for drift (one element deleted and another added keeps it), so on a dataplane without
  generations the reconciler reads everything back every full-sync period (``serve
  --full-sync``, default 300 s), and on nftables any generation it did not make itself sends it
  to the elements.
- The delta is typed: per set, the intervals to add and to remove (``ElementDelta``), or
  ``None`` when the set must be loaded whole (created, or too big to read back after a change
  of size); per kind of named object (chains, sets, counters), those missing, modified or
  unexpected (``ObjectDelta``), each a ``Problem`` of the diff.
- One writer at a time (``base.serialized``), and every write updates the cache as written,
  so a process that applied once checks later plans against its cache, not the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import TypeVar

from netpolicy.kernel.base import netns_id
from netpolicy.kernel.delta import sorted_delta
from netpolicy.kernel.layout import ListenerLayout, layout, listener_id
from netpolicy.kernel.values import KernelError, ListenerStatus, Problem, role_label
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan

ElementDelta = tuple[frozenset[Interval], frozenset[Interval]]  # (add, remove)
W = TypeVar("W")
F = TypeVar("F")


@dataclass
class SetRecord:
    """One set's elements, as read or as last written. ``intervals`` is None when the set is
    too big to read back cheaply and its size changed: it is then reloaded whole. ``source``
    is the plan refuse list the elements were written from (or found equal to), which lets the
    next plan be compared list against list."""

    intervals: Set[Interval] | None
    source: tuple[Interval, ...] | None = None


@dataclass
class DataplaneCache:
    """The owned sets as this process last read or wrote them, in one network namespace."""

    generation: int | None  # the dataplane's change counter when taken; None: it has none
    counts: dict[str, int | None] = field(default_factory=dict)  # sizes as the kernel reported them
    sets: dict[str, SetRecord] = field(default_factory=dict)
    in_sync_plan: KernelPlan | None = None  # a plan found or made in sync at ``generation``
    netns: int = field(default_factory=netns_id)

    def here(self) -> bool:
        """Whether the calling thread is in the namespace this cache describes."""
        return self.netns == netns_id()

    def trusted(self, name: str, count: int | None, generation: int | None) -> SetRecord | None:
        """The cached set ``name`` if it may stand for the kernel's content: the dataplane is
        at the cached generation, or, having no generation, reports the cached size."""
        record = self.sets.get(name)
        if record is None or record.intervals is None:
            return None
        if self.generation is not None:
            return record if generation == self.generation else None
        return record if count is not None and self.counts.get(name) == count else None

    def size_changed(self, name: str, count: int | None) -> bool:
        return name in self.counts and self.counts[name] != count

    def own_commit(self, before: int) -> None:
        """This process committed one change at generation ``before``: the cache, if it was
        current then, still is (a promotion does not touch the refuse sets)."""
        if self.generation == before:
            self.generation = before + 1


@dataclass(frozen=True)
class ObjectDelta:
    """Named objects of one kind (chains, sets, counters): those the plan wants that are
    missing or not as wanted, in the plan's order, and those found that it does not want."""

    changes: tuple[tuple[str, str], ...]  # (name, "missing" | "modified")
    unexpected: tuple[str, ...]  # sorted

    def names(self, what: str) -> list[str]:
        return [name for name, found in self.changes if found == what]

    def problems(self, kind: str, subject: Callable[[str], str], detail: str = "") -> list[Problem]:
        """``missing-<kind>`` and ``modified-<kind>`` problems (``detail`` for the latter)."""
        return [Problem(f"{what}-{kind}", subject(name), detail if what == "modified" else "") for name, what in self.changes]

    def unexpected_problems(self, kind: str, subject: Callable[[str], str]) -> list[Problem]:
        return [Problem(f"unexpected-{kind}", subject(name)) for name in self.unexpected]


def compare_objects(wanted: Mapping[str, W], found: Mapping[str, F], same: Callable[[W, F], bool]) -> ObjectDelta:
    """Wanted objects against found ones, matched by name and compared with ``same``."""
    changes = []
    for name, want in wanted.items():
        if name not in found:
            changes.append((name, "missing"))
        elif not same(want, found[name]):
            changes.append((name, "modified"))
    return ObjectDelta(tuple(changes), tuple(sorted(found.keys() - wanted.keys())))


def list_delta(source: tuple[Interval, ...] | None, refuse: tuple[Interval, ...]) -> ElementDelta | None:
    """(add, remove) from the refuse list ``source`` to ``refuse``, list against list; None
    without a source or when a list is not sorted the way plans promise."""
    if source is None:
        return None
    found = ([], []) if source is refuse else sorted_delta(source, refuse)
    if found is None:
        return None
    return frozenset(found[0]), frozenset(found[1])


def element_delta(
    record: SetRecord | None, refuse: tuple[Interval, ...], wanted: Callable[[], Set[Interval]],
    stored: Callable[[frozenset[Interval]], frozenset[Interval]] = frozenset,
) -> ElementDelta | None:
    """(add, remove) taking the set ``record`` describes to the refuse list ``refuse`` (whose
    elements are ``wanted()``); None without a usable record (the set is loaded whole). List
    against list when the record knows the list it holds, else by set difference. ``stored``
    turns a list's intervals into the entries the dataplane keeps for them."""
    if record is None or record.intervals is None:
        return None
    found = list_delta(record.source, refuse)
    if found is not None:  # a range and the one replacing it can share stored entries
        add, remove = stored(found[0]), stored(found[1])
        return add - remove, remove - add
    want = wanted()
    return frozenset(want - record.intervals), frozenset(record.intervals - want)


class SetNames:
    """How a backend names its sets: ``pattern`` with ``{kind}`` (the kind's first letter),
    ``{family}`` and ``{lid}``; ``parse`` inverts ``name`` for every kind in ``kinds``."""

    def __init__(self, pattern: str, kinds: Sequence[str]) -> None:
        self.pattern = pattern
        self.kinds = {kind[0]: kind for kind in kinds}
        letters = "".join(self.kinds)
        self._regex = re.compile(
            "^" + re.escape(pattern).replace(r"\{kind\}", f"(?P<kind>[{letters}])")
            .replace(r"\{family\}", "(?P<family>[46])").replace(r"\{lid\}", "(?P<lid>.+)") + "$"
        )

    def name(self, kind: str, lid: str, family: int) -> str:
        return self.pattern.format(kind=kind[0], family=family, lid=lid)

    def parse(self, name: str) -> tuple[str, int, str] | None:
        """(kind, family, listener id) of a name made by ``name``; None for any other."""
        found = self._regex.match(name)
        if found is None:
            return None
        return self.kinds[found["kind"]], int(found["family"]), found["lid"]


def timed_sets(names: SetNames, kind: str, listener: str, hosts: Mapping[str, float], max_seconds: int) -> dict[tuple[int, str], dict[str, float]]:
    """Per (family, set name) of ``listener``'s ``kind`` timed sets (promoted, learned), the
    hosts of ``hosts`` (address -> seconds) that go there; a time the kernel cannot hold in one
    go is refused."""
    lid = listener_id(listener)
    out: dict[tuple[int, str], dict[str, float]] = {}
    for address, seconds in hosts.items():
        if not 0 < seconds <= max_seconds:
            raise KernelError(f"{kind} time must be between 1 and {max_seconds} seconds")
        family = ipaddress.ip_address(address).version
        out.setdefault((family, names.name(kind, lid, family)), {})[address] = seconds
    return out


def promotion_set(names: SetNames, listener: str, address: str, seconds: float, max_seconds: int) -> tuple[int, str]:
    """(family, set name) a promotion of ``address`` on ``listener`` goes to."""
    ((where, _hosts),) = timed_sets(names, "promoted", listener, {address: seconds}, max_seconds).items()
    return where


def missing_timed_set(listener: str, kind: str, family: int) -> KernelError:
    """The error for a promotion or learned refusal on a listener the kernel has no such set for."""
    return KernelError(
        f"listener {listener!r} has no {role_label(kind, family)} set in the kernel "
        "(not kernel-enforced, wrong address family, or the plan is not applied)"
    )


def listener_statuses(
    plan: KernelPlan | None, sizes: Mapping[str, Mapping[str, int]], refused: Mapping[str, int], installed: Set[str]
) -> tuple[ListenerStatus, ...]:
    """One status per listener id found in the plan, the sets (``sizes``: per id, per label)
    or the refusal counters (``refused``); ``installed``: ids with their sets and counter."""
    by_lid: dict[str, ListenerLayout] = {ll.lid: ll for ll in layout(plan)} if plan else {}
    out = []
    for lid in sorted(set(by_lid) | set(sizes) | set(refused)):
        ll = by_lid.get(lid)
        out.append(ListenerStatus(
            name=ll.name if ll else lid, listener_id=lid,
            address=ll.plan.address if ll else None, port=ll.port if ll else None,
            installed=lid in installed, set_sizes=dict(sizes.get(lid, {})), refused=refused.get(lid, 0),
        ))
    return tuple(out)
