"""The order of element changes on nftables: an address refused before and after a re-apply is
refused by one same set element across every commit (measured: a commit can fall between the
lookups of one packet, and a lookup cannot be trusted across a commit that replaces the element
it would find: see ``nftables._element_phases``).

The transactions are replayed on a model of the hosts and networks sets, over a 64-address
space so that random plans move addresses between the two sets often."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from netpolicy.kernel import nftables as nft
from netpolicy.kernel.delta import split_hosts
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan, ListenerPlan

SPACE = ipaddress.ip_network("10.0.0.0/26")


def ivs(cidrs: tuple[str, ...]) -> tuple[Interval, ...]:
    return tuple(map(Interval.from_cidr, cidrs))


def _plan(refuse4: tuple[str, ...]) -> KernelPlan:
    return KernelPlan("g", (ListenerPlan("IncomingMail", "10.1.0.1", 25, True, ivs(refuse4), ()),))


def _changes(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[nft.NftDesired, dict[str, tuple[frozenset[Interval], frozenset[Interval]]]]:
    """The wanted state for ``new``, and per hosts/networks set: (added, removed) from ``old``."""
    want = nft.desired(_plan(new), None)
    group = want.groups[0]
    names = (group.hosts, group.networks)
    return want, {name: (wanted - was, was - wanted) for name, was, wanted in zip(names, split_hosts(ivs(old)), split_hosts(ivs(new)))}


def _phases(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[nft.NftDesired, list[list[nft.ElementOp]]]:
    want, changes = _changes(old, new)
    return want, nft._element_phases(want, dict(changes))


def _covering(sets: dict[str, set[Interval]], address: int) -> set[tuple[str, Interval]]:
    return {(name, iv) for name, members in sets.items() for iv in members if iv.first <= address <= iv.last}


def _replay(want: nft.NftDesired, old: tuple[str, ...], phases: list[list[nft.ElementOp]]) -> list[str]:
    """Apply the transactions to a model of the sets; the addresses (and commit numbers) where
    an address refused before and after the change is not kept by one same set, or where one
    refused by neither plan is refused in between."""
    group = want.groups[0]
    sets = {group.hosts: set(split_hosts(ivs(old))[0]), group.networks: set(split_hosts(ivs(old))[1]), group.transit: set()}
    before_all = {a: _covering(sets, a) for a in range(int(SPACE[0]), int(SPACE[-1]) + 1)}
    final_want = {name: set(members) for name, members in zip((group.hosts, group.networks), split_hosts(want.groups[0].refuse))}
    final_want[group.transit] = set()
    after_all = {a: _covering(final_want, a) for a in before_all}
    problems = []
    for number, phase in enumerate(phases):
        before = {a: _covering(sets, a) for a in before_all}
        for op in phase:
            if op.add:
                assert not any(
                    iv.first <= new.last and new.first <= iv.last for iv in sets[op.set] for new in op.elements
                ), f"commit {number}: {op.set} would get overlapping elements"
                sets[op.set] |= op.elements
            else:
                assert op.elements <= sets[op.set], f"commit {number}: removing what {op.set} does not hold"
                sets[op.set] -= op.elements
        for address, was in before.items():
            now = _covering(sets, address)
            if before_all[address] and after_all[address] and not was & now:
                problems.append(f"commit {number}: {ipaddress.ip_address(address)} not kept by one element")
            if now and not (before_all[address] or after_all[address]):
                problems.append(f"commit {number}: {ipaddress.ip_address(address)} refused by neither plan")
    assert sets == final_want
    return problems


def _one_transaction(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[nft.NftDesired, list[list[nft.ElementOp]]]:
    """The naive way: each set's removals, then its additions, all in a single commit."""
    want, changes = _changes(old, new)
    ops = []
    for name, (added, removed) in changes.items():
        kind = want.sets[name].kind
        ops += [nft.ElementOp(False, name, kind, removed), nft.ElementOp(True, name, kind, added)]
    return want, [ops]


def test_replay_catches_a_move_inside_one_transaction() -> None:
    """The checker itself: the naive single transaction fails it."""
    old, new = ("10.0.0.5/32",), ("10.0.0.0/28",)
    want, naive = _one_transaction(old, new)
    assert _replay(want, old, naive) == ["commit 0: 10.0.0.5 not kept by one element"]


def test_host_to_network_adds_the_network_first() -> None:
    want, phases = _phases(("10.0.0.5/32",), ("10.0.0.0/28",))
    assert [[(op.add, op.kind) for op in phase] for phase in phases] == [[(True, "networks")], [(False, "hosts")]]
    assert _replay(want, ("10.0.0.5/32",), phases) == []


def test_network_to_host_adds_the_host_first() -> None:
    want, phases = _phases(("10.0.0.0/28",), ("10.0.0.5/32",))
    assert [[(op.add, op.kind) for op in phase] for phase in phases] == [[(True, "hosts")], [(False, "networks")]]
    assert _replay(want, ("10.0.0.0/28",), phases) == []


def test_ordinary_changes_stay_one_transaction() -> None:
    """Hosts in and out, a network added and another removed: one commit."""
    old, new = ("10.0.0.1/32", "10.0.0.16/29"), ("10.0.0.2/32", "10.0.0.32/29")
    want, phases = _phases(old, new)
    assert len(phases) == 1
    assert [(op.add, op.kind) for op in phases[0]] == [(True, "hosts"), (False, "hosts"), (False, "networks"), (True, "networks")]
    assert _replay(want, old, phases) == []


def test_widened_network_is_bridged_by_the_transit_set() -> None:
    old, new = ("10.0.0.16/29",), ("10.0.0.16/28",)
    want, phases = _phases(old, new)
    assert [[(op.add, op.kind) for op in phase] for phase in phases] == [
        [(True, "transit")], [(False, "networks"), (True, "networks")], [(False, "transit")],
    ]
    assert _replay(want, old, phases) == []


def test_replay_catches_a_network_swapped_inside_one_transaction() -> None:
    old, new = ("10.0.0.16/29",), ("10.0.0.16/28",)
    want, naive = _one_transaction(old, new)
    assert len(_replay(want, old, naive)) == 8  # the /29's eight addresses


def test_no_change_is_one_empty_transaction() -> None:
    assert _phases(("10.0.0.1/32",), ("10.0.0.1/32",))[1] == [[]]


def _refuse_list() -> st.SearchStrategy[tuple[str, ...]]:
    network = st.tuples(st.integers(26, 32), st.integers(0, 63)).map(
        lambda pl: ipaddress.ip_network(f"10.0.0.{pl[1]}/{pl[0]}", strict=False)
    )
    return st.lists(network, max_size=6).map(lambda nets: tuple(str(n) for n in ipaddress.collapse_addresses(nets)))


@settings(max_examples=400, deadline=None)
@given(_refuse_list(), _refuse_list())
def test_every_commit_keeps_refused_addresses_in_one_set(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    want, phases = _phases(old, new)
    assert len(phases) <= 3
    assert _replay(want, old, phases) == []
