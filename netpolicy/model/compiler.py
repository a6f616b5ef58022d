"""Policy -> kernel plan: which addresses the kernel may refuse at SYN, per listener.

An address goes into a listener's refuse set only if its HAT decision is TCPREFUSE whatever its
host name and DNS-list status turn out to be. Walking the HAT top-down for a whole address
space at once:

- an address entry of a non-CONTINUE row *decides* its addresses; earlier decided addresses are
  holes in later rows (``10.66.0.5`` TRUSTED before ``10.66.0.0/16`` BLOCKED leaves it out);
- a host-name, DNS-list or score entry could match *any* address, so once a row with such an
  entry and a non-TCPREFUSE behaviour has been passed, no later row can put anything into the
  kernel: those entries are reported as ``userland_only`` with the row that precedes them;
- a TCPREFUSE row's own host-name, DNS-list and score entries are userland-only by nature;
- ``file:`` lists and ``country[...]`` entries arrive as address sets and count as address
  entries.

All set arithmetic is on integer intervals (``netpolicy.model.intervals``), so a million entries
compile in seconds and the result is already sorted and merged: the plan's ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

from netpolicy.model.collector import collector_paused
from netpolicy.model.entries import (
    V4_MAX,
    V6_MAX,
    AddressEntry,
    AddressSetEntry,
    DnsListEntry,
    Entry,
    HostnameEntry,
    ScoreEntry,
)
from netpolicy.model.intervals import merge, subtract, union, versioned
from netpolicy.model.plan import KernelPlan, ListenerPlan, UserlandOnly
from netpolicy.model.policy import Listener, Policy

Spans = Sequence[tuple[int, int]]  # sorted, disjoint, touching ones joined
_FULL: dict[int, list[tuple[int, int]]] = {4: [(0, V4_MAX)], 6: [(0, V6_MAX)]}


_SYMBOLIC = (HostnameEntry, DnsListEntry, ScoreEntry)


def _describe(entry: Entry, plural: bool = False) -> str:
    if isinstance(entry, DnsListEntry):
        kind = "DNS-list entr"
    elif isinstance(entry, ScoreEntry):
        kind = "score entr"
    else:
        kind = "host-name entr"
    return kind + ("ies" if plural else "y")


def compile_listener(policy: Policy, listener: Listener) -> ListenerPlan:
    decided: dict[int, Spans] = {4: [], 6: []}
    refuse: dict[int, Spans] = {4: [], 6: []}
    userland: list[UserlandOnly] = []
    blocker: str | None = None  # why later rows cannot reach the kernel
    for row in listener.hat:
        mfp = policy.mail_flow_policies[row.policy]
        if mfp.behavior == "continue":
            continue
        entries: list[Entry] = [] if row.group == "ALL" else list(policy.sender_groups[row.group])
        by_family = _row_intervals(row.group, entries)
        symbolic = [e for e in entries if isinstance(e, _SYMBOLIC)]
        if mfp.behavior == "tcprefuse":
            for entry in symbolic:
                userland.append(UserlandOnly(row.group, entry.text, f"{_describe(entry, plural=True)} cannot be decided in the kernel"))
            if not listener.kernel or blocker is not None:
                reason = f"{blocker} precedes it" if listener.kernel else "kernel enforcement is off for this listener"
                userland += [UserlandOnly(row.group, text, reason) for text in _address_texts(row.group, entries)]
            else:
                for fam in (4, 6):
                    refuse[fam] = union(refuse[fam], subtract(by_family[fam], decided[fam]))
        elif symbolic and blocker is None:
            first = symbolic[0]
            blocker = f"{_describe(first)} {first.text} of {row.group} ({mfp.behavior})"
        for fam in (4, 6):
            decided[fam] = union(decided[fam], by_family[fam])
    return ListenerPlan(
        name=listener.name,
        address=listener.address,
        port=listener.port,
        kernel=listener.kernel,
        refuse4=versioned(4, refuse[4]),
        refuse6=versioned(6, refuse[6]),
        userland_only=tuple(userland),
    )


def _row_intervals(group: str, entries: list[Entry]) -> dict[int, Spans]:
    """The row's addresses per family, merged. A list's or country's intervals come merged
    already and are joined to the others (``union``), never sorted again."""
    if group == "ALL":
        return {4: list(_FULL[4]), 6: list(_FULL[6])}
    out: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    sets: list[AddressSetEntry] = []
    for entry in entries:
        if isinstance(entry, AddressEntry):
            out[entry.family].append((entry.start, entry.end))
        elif isinstance(entry, AddressSetEntry):
            sets.append(entry)
    merged: dict[int, Spans] = {fam: merge(ivs) for fam, ivs in out.items()}
    for entry in sets:
        merged[4] = union(merged[4], entry.v4)
        merged[6] = union(merged[6], entry.v6)
    return merged


def _address_texts(group: str, entries: list[Entry]) -> list[str]:
    if group == "ALL":
        return ["ALL"]
    return [e.text for e in entries if isinstance(e, (AddressEntry, AddressSetEntry))]


@collector_paused()
def compile_policy(policy: Policy) -> KernelPlan:
    """The kernel plan for every listener (``kernel: false`` listeners get empty sets)."""
    return KernelPlan(
        generation=policy.generation(),
        listeners=tuple(compile_listener(policy, listener) for listener in policy.listeners),
    )
