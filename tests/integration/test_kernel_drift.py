"""Drift: someone flushes the ruleset, deletes an element, a rule or the jump. A full diff sees
it, enforcement is really broken, and the reconciler repairs it (and logs what was wrong)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import pytest

from netpolicy.kernel import nftables as nft
from netpolicy.kernel.reconciler import Reconciler
from tests.support.kernel import (
    BACKENDS,
    BLOCKED_HOST,
    BLOCKED_NET,
    LISTENER,
    PORT,
    backend_in,
    listening,
    make_plan,
    outcome,
)
from tests.support.netns import Netns, NetPair
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.netns


def _nft_delete_rule(ns: Netns) -> None:
    listing = ns.exec(["nft", "-a", "list", "chain", "inet", "netpolicy", "input"]).stdout
    handle = re.search(r"hosts4 gen=\S+\" # handle (\d+)", listing)
    assert handle, listing
    ns.exec(["nft", "delete", "rule", "inet", "netpolicy", "input", "handle", handle.group(1)])


def _xt(ns: Netns, *args: str) -> None:
    ns.exec(["iptables-legacy", *args])


def _iptables_flush_all(ns: Netns) -> None:
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        ns.exec([tool, "-F"])
        ns.exec([tool, "-X"])
    ns.exec(["ipset", "destroy"])


# label -> (how to cause it, a line the diff and the repair log must contain)
DRIFT: dict[str, dict[str, tuple[Callable[[Netns], None], str]]] = {
    "nftables": {
        "table flushed": (lambda ns: ns.exec(["nft", "flush", "ruleset"]), "! missing table: inet netpolicy"),
        "element deleted": (
            lambda ns: ns.exec(["nft", "delete", "element", "inet", "netpolicy", f"h4_{LISTENER}", f"{{ {BLOCKED_HOST} }}"]),
            f"+ {BLOCKED_HOST}/32 -> {LISTENER} refuse4",
        ),
        "rule deleted": (_nft_delete_rule, f"! missing rule: netpolicy {LISTENER} hosts4"),
        "hook chain deleted": (
            lambda ns: (ns.exec(["nft", "flush", "chain", "inet", "netpolicy", "input"]),
                        ns.exec(["nft", "delete", "chain", "inet", "netpolicy", "input"])),
            "! missing chain: inet netpolicy input",
        ),
    },
    "iptables": {
        "table flushed": (_iptables_flush_all, "! missing chain: filter NETPOLICY (IPv4)"),
        "element deleted": (
            lambda ns: ns.exec(["ipset", "del", f"netpolicy-{LISTENER}-r4", BLOCKED_HOST]),
            f"+ {BLOCKED_HOST}/32 -> {LISTENER} refuse4",
        ),
        "rule deleted": (lambda ns: _xt(ns, "-D", "NETPOLICY", "1"), f"! missing rule: netpolicy {LISTENER} refuse4"),
        "jump deleted": (lambda ns: _xt(ns, "-D", "INPUT", "-j", "NETPOLICY"), "! missing jump: filter INPUT -j NETPOLICY (IPv4)"),
    },
}


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_each_drift_is_seen_by_diff_and_repaired_by_the_reconciler(
    netpair: NetPair, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    plan = make_plan(netpair.server_v4)
    reconciler = Reconciler(backend, plan)
    assert netpair.server.call(reconciler.check_once).applied
    dest = (netpair.server_v4, PORT)
    caplog.set_level(logging.INFO, logger="netpolicy.reconciler")
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, dest, blocked) == "refused"
        assert not netpair.server.call(reconciler.check_once).repaired
        for number, (label, (cause, expected)) in enumerate(DRIFT[backend_name].items(), start=1):
            cause(netpair.server)
            assert outcome(netpair.client, dest, blocked) == "connected", f"{label}: drift did not break enforcement"
            fresh = backend_in(netpair.server, backend_name)  # a full read, as `netpolicy diff` does
            found = netpair.server.call(lambda: fresh.diff(plan))
            assert expected in found.lines(), f"{label}: {found.lines()}"
            caplog.clear()
            result = netpair.server.call(reconciler.check_once)
            assert result.repaired and reconciler.repairs == number, label
            logged = " ".join(r.getMessage() for r in caplog.records if r.name == "netpolicy.reconciler")
            assert "drift repaired" in logged and expected in logged, f"{label}: {logged}"
            assert outcome(netpair.client, dest, blocked) == "refused", label
            assert netpair.server.call(lambda: fresh.diff(plan)).in_sync, label


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_reconciler_loop_repairs_a_flushed_ruleset_and_restores_promotions(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    promoted = netpair.add_client_address("192.0.2.99")
    plan = make_plan(netpair.server_v4)
    reconciler = Reconciler(backend, plan)
    executor = netpair.server.executor()
    dest = (netpair.server_v4, PORT)

    async def scenario() -> None:
        loop_task = asyncio.create_task(reconciler.run(interval=0.1, executor=executor))
        try:
            await wait_until_async(lambda: reconciler.checks > 0, "the reconciler's first round", timeout=10)
            await asyncio.get_running_loop().run_in_executor(executor, reconciler.promote, LISTENER, promoted, 300)
            assert outcome(netpair.client, dest, promoted) == "refused"
            DRIFT[backend_name]["table flushed"][0](netpair.server)
            await wait_until_async(lambda: reconciler.repairs >= 1, "the reconciler's repair", timeout=10)
            await asyncio.to_thread(wait_until, lambda: outcome(netpair.client, dest, promoted, 0.5) == "refused",
                                    "the promoted host refused again", timeout=10)
            assert outcome(netpair.client, dest, blocked) == "refused"
            left = {p.address: p.expires_in for p in netpair.server.call(backend.promoted)}
            assert 250 < left[promoted] <= 300
        finally:
            loop_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop_task

    with listening(netpair, netpair.server_v4):
        try:
            asyncio.run(scenario())
        finally:
            executor.shutdown()
    assert reconciler.last_error is None


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_big_set_whose_size_changed_is_reloaded_whole_not_read_back(
    netpair: NetPair, backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netpolicy.kernel import iptables, nftables

    monkeypatch.setattr(nftables if backend_name == "nftables" else iptables, "RELOAD_THRESHOLD", 1)
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    plan = make_plan(netpair.server_v4, refuse4=(f"{BLOCKED_HOST}/32", "192.0.2.70/32", "198.51.100.0/24"))
    reconciler = Reconciler(backend, plan)
    netpair.server.call(reconciler.check_once)
    DRIFT[backend_name]["element deleted"][0](netpair.server)
    result = netpair.server.call(reconciler.check_once)
    assert result.repaired and result.diff is not None
    assert [p.code for p in result.diff.problems] == ["modified-set"], result.diff.lines()
    assert "reloading it" in result.diff.lines()[0]
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, (netpair.server_v4, PORT), blocked) == "refused"
    assert netpair.server.call(lambda: backend_in(netpair.server, backend_name).diff(plan)).in_sync


def test_iptables_apply_redoes_from_a_fresh_read_when_its_record_is_wrong(netpair: NetPair) -> None:
    """An incremental iptables apply trusts its own record of the sets (counting entries costs
    22 ms per 1M), with strict adds and dels: someone else having added what it adds, or deleted
    what it deletes, makes it read the sets and apply again, never fail or skip."""
    backend = backend_in(netpair.server, "iptables")
    name = f"netpolicy-{LISTENER}-r4"
    extra, other = "192.0.2.77", "192.0.2.88"
    base = make_plan(netpair.server_v4, generation="g1")
    with_extra = make_plan(netpair.server_v4, generation="g2", refuse4=(f"{BLOCKED_HOST}/32", f"{extra}/32", f"{other}/32"))
    netpair.server.call(lambda: backend.apply(base))
    netpair.server.exec(["ipset", "add", name, extra])  # what the next apply adds is there already
    assert netpair.server.call(lambda: backend.apply(with_extra)).element_changes == 2
    assert netpair.server.call(lambda: backend.diff(with_extra)).in_sync
    netpair.server.call(lambda: backend.apply(with_extra))  # the record is right again
    netpair.server.exec(["ipset", "del", name, other])  # what the next apply removes is gone already
    assert not netpair.server.call(lambda: backend.apply(base)).in_sync
    assert netpair.server.call(lambda: backend.diff(base)).in_sync


def test_nftables_fresh_diff_sees_an_element_swapped_for_another(netpair: NetPair) -> None:
    """A process with no record checks a hosts set of the plan's size element by element
    instead of dumping it: one element swapped for another (same size) is still drift."""
    backend = backend_in(netpair.server, "nftables")
    plan = make_plan(netpair.server_v4, refuse4=(f"{BLOCKED_HOST}/32", "192.0.2.67/32", "198.51.100.0/24"))
    netpair.server.call(lambda: backend.apply(plan))
    fresh = backend_in(netpair.server, "nftables")
    assert netpair.server.call(lambda: fresh.diff(plan)).in_sync
    hosts = f"h4_{LISTENER}"
    netpair.server.exec(["nft", "delete", "element", "inet", "netpolicy", hosts, f"{{ {BLOCKED_HOST} }}"])
    netpair.server.exec(["nft", "add", "element", "inet", "netpolicy", hosts, "{ 192.0.2.99 }"])
    again = backend_in(netpair.server, "nftables")
    found = netpair.server.call(lambda: again.diff(plan))
    assert f"+ {BLOCKED_HOST}/32 -> {LISTENER} refuse4" in found.lines()
    assert f"- 192.0.2.99/32 -> {LISTENER} refuse4" in found.lines()


def test_nftables_transit_set_left_holding_elements_is_emptied(netpair: NetPair) -> None:
    """The transit set only holds networks while an apply replaces them; elements found there
    (an apply cut short, or someone else's) are drift, and the repair empties it."""
    backend = backend_in(netpair.server, "nftables")
    plan = make_plan(netpair.server_v4)
    netpair.server.call(lambda: backend.apply(plan))
    netpair.server.exec(["nft", "add", "element", "inet", "netpolicy", f"t4_{LISTENER}", "{ 10.9.9.0/24 }"])
    found = netpair.server.call(lambda: backend.diff(plan))
    assert f"! modified set: t4_{LISTENER} (1 elements left from an interrupted change)" in found.lines(), found.lines()
    assert not netpair.server.call(lambda: backend.apply(plan)).in_sync
    assert netpair.server.call(lambda: backend.diff(plan)).in_sync
    assert "elements = " not in netpair.server.exec(["nft", "list", "set", "inet", "netpolicy", f"t4_{LISTENER}"]).stdout


def test_nftables_fresh_diff_finds_hosts_missing_without_a_dump(netpair: NetPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process finds the wanted hosts a smaller set lacks by lookups alone, and proves
    the networks set by lookups too; a set holding anything else needs the dump."""
    backend = backend_in(netpair.server, "nftables")
    base = make_plan(netpair.server_v4, refuse4=(f"{BLOCKED_HOST}/32", "198.51.100.0/24"))
    more = make_plan(netpair.server_v4, refuse4=(f"{BLOCKED_HOST}/32", "192.0.2.70/32", "192.0.2.71/32", "198.51.100.0/24"))
    netpair.server.call(lambda: backend.apply(base))
    dumped: list[str] = []
    real = nft.NftablesBackend._read_set
    monkeypatch.setattr(nft.NftablesBackend, "_read_set", staticmethod(lambda sock, name, kind, family: dumped.append(name) or real(sock, name, kind, family)))
    again = backend_in(netpair.server, "nftables")
    found = netpair.server.call(lambda: again.diff(more))
    assert {f"+ 192.0.2.70/32 -> {LISTENER} refuse4", f"+ 192.0.2.71/32 -> {LISTENER} refuse4"} <= set(found.lines())
    assert dumped == []
    netpair.server.exec(["nft", "add", "element", "inet", "netpolicy", f"h4_{LISTENER}", "{ 192.0.2.99 }"])
    third = backend_in(netpair.server, "nftables")
    found = netpair.server.call(lambda: third.diff(more))
    assert f"- 192.0.2.99/32 -> {LISTENER} refuse4" in found.lines() and f"h4_{LISTENER}" in dumped


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_long_running_reconciler_repairs_a_swap_that_keeps_every_set_size(
    netpair: NetPair, backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One backend object that has applied and reconciled several times trusts its record
    while nothing changed; one element deleted and another added keeps every set's size. On
    nftables the ruleset generation moved without a commit of ours, so the next check reads
    the elements; ipset has no generation, so the next full sync (``--full-sync``) finds it."""
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    now = [0.0]
    base = make_plan(netpair.server_v4, generation="g1", refuse4=(f"{BLOCKED_HOST}/32", "192.0.2.67/32", BLOCKED_NET))
    more = make_plan(netpair.server_v4, generation="g2", refuse4=(f"{BLOCKED_HOST}/32", "192.0.2.67/32", "192.0.2.68/32", BLOCKED_NET))
    reconciler = Reconciler(backend, base, full_sync=300, clock=lambda: now[0])
    for plan in (base, more, base):
        reconciler.set_plan(plan)
        assert netpair.server.call(reconciler.check_once).applied
        now[0] += 10
        assert not netpair.server.call(reconciler.check_once).repaired
    checked: list[str] = []
    if backend_name == "nftables":  # a promotion is a commit of ours: the record stays trusted
        real = nft.NftablesBackend._check.__func__  # type: ignore[attr-defined]
        monkeypatch.setattr(nft.NftablesBackend, "_check", classmethod(lambda cls, sock, name, *a: checked.append(name) or real(cls, sock, name, *a)))
        netpair.server.call(lambda: reconciler.promote(LISTENER, "192.0.2.98", 300))
        assert not netpair.server.call(reconciler.check_once).repaired and checked == []
    hosts = f"h4_{LISTENER}" if backend_name == "nftables" else f"netpolicy-{LISTENER}-r4"
    if backend_name == "nftables":
        netpair.server.exec(["nft", "delete", "element", "inet", "netpolicy", hosts, f"{{ {BLOCKED_HOST} }}"])
        netpair.server.exec(["nft", "add", "element", "inet", "netpolicy", hosts, "{ 192.0.2.99 }"])
    else:
        netpair.server.exec(["ipset", "del", hosts, BLOCKED_HOST])
        netpair.server.exec(["ipset", "add", hosts, "192.0.2.99"])
        assert not netpair.server.call(reconciler.check_once).repaired  # sizes held: the cheap check is blind
        now[0] += 300
    dest = (netpair.server_v4, PORT)
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, dest, blocked) == "connected"
        result = netpair.server.call(reconciler.check_once)
        assert result.repaired and result.diff is not None, backend_name
        assert {f"+ {BLOCKED_HOST}/32 -> {LISTENER} refuse4", f"- 192.0.2.99/32 -> {LISTENER} refuse4"} <= set(result.diff.lines())
        assert outcome(netpair.client, dest, blocked) == "refused"
    assert netpair.server.call(lambda: backend_in(netpair.server, backend_name).diff(base)).in_sync


@pytest.mark.parametrize("replacement", ["198.51.100.0/25", "198.51.100.128/25", "198.51.100.0/23", "10.9.9.0/24"])
def test_nftables_fresh_diff_sees_a_network_swapped_for_another(netpair: NetPair, replacement: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The networks set is checked by lookups of each interval's last address and end: an
    interval cut short, moved, widened or replaced (same element count) is still drift, found
    exactly (by the dump the failed check falls back to)."""
    backend = backend_in(netpair.server, "nftables")
    plan = make_plan(netpair.server_v4)
    netpair.server.call(lambda: backend.apply(plan))
    dumped: list[str] = []
    real = nft.NftablesBackend._read_set
    monkeypatch.setattr(nft.NftablesBackend, "_read_set", staticmethod(lambda sock, name, kind, family: dumped.append(name) or real(sock, name, kind, family)))
    assert netpair.server.call(lambda: backend_in(netpair.server, "nftables").diff(plan)).in_sync and dumped == []
    networks = f"n4_{LISTENER}"
    netpair.server.exec(["nft", "delete", "element", "inet", "netpolicy", networks, f"{{ {BLOCKED_NET} }}"])
    netpair.server.exec(["nft", "add", "element", "inet", "netpolicy", networks, f"{{ {replacement} }}"])
    found = netpair.server.call(lambda: backend_in(netpair.server, "nftables").diff(plan))
    assert {f"+ {BLOCKED_NET} -> {LISTENER} refuse4", f"- {replacement} -> {LISTENER} refuse4"} <= set(found.lines()), found.lines()
    assert dumped == [networks]
