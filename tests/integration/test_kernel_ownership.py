"""Only netpolicy's own objects are ever changed: other tables, chains, rules and ipsets (some
with names close to ours) stay byte-identical through apply, re-apply and flush."""

from __future__ import annotations

import pytest

from tests.support.kernel import (
    BACKENDS,
    add_foreign_state,
    backend_in,
    foreign_snapshot,
    make_plan,
)
from tests.support.netns import NetPair

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_foreign_objects_are_untouched_by_apply_and_flush(netpair: NetPair, backend_name: str) -> None:
    ns = netpair.server
    backend = backend_in(ns, backend_name)
    add_foreign_state(ns)
    before = foreign_snapshot(ns)
    assert "natlike" in before["nft"] and "FOREIGN" in before["iptables-legacy-save"] and "other" in before["ipset"]

    ns.call(lambda: backend.apply(make_plan("::")))
    ns.call(lambda: backend.apply(make_plan("::", generation="g2", refuse4=("192.0.2.0/25",))))
    assert foreign_snapshot(ns) == before
    assert ns.call(lambda: backend.diff(make_plan("::", generation="g2", refuse4=("192.0.2.0/25",)))).in_sync

    assert ns.call(backend.flush) is True
    assert foreign_snapshot(ns) == before
    assert ns.call(backend.flush) is False
    # and nothing of ours is left behind
    assert "inet netpolicy\n" not in ns.exec(["nft", "list", "tables"]).stdout + "\n"
    assert not [n for n in ns.exec(["ipset", "list", "-n"]).stdout.split() if n.startswith("netpolicy")]
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        assert "NETPOLICY " not in ns.exec([tool, "-S"]).stdout.replace("NETPOLICY2", "")


def test_a_plan_without_kernel_listeners_removes_our_table(netpair: NetPair) -> None:
    from netpolicy.model.plan import KernelPlan, ListenerPlan

    ns = netpair.server
    backend = backend_in(ns, "nftables")
    ns.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    off = KernelPlan("g2", (ListenerPlan("IncomingMail", netpair.server_v4, 2525, False, ("192.0.2.0/24",)),))
    result = ns.call(lambda: backend.apply(off))
    assert [p.code for p in result.problems] == ["unexpected-table"]
    assert "netpolicy" not in ns.exec(["nft", "list", "tables"]).stdout
    assert ns.call(lambda: backend.diff(off)).in_sync


def test_iptables_backend_creates_no_legacy_table_it_does_not_need(netpair: NetPair) -> None:
    ns = netpair.server
    backend = backend_in(ns, "iptables")

    def tables(family: str) -> list[str]:
        return ns.exec(["cat", f"/proc/net/{family}_tables_names"], check=False).stdout.split()

    assert tables("ip") == [] and tables("ip6") == []
    ns.call(lambda: backend.apply(make_plan(netpair.server_v4)))  # an IPv4-only listener
    assert ns.call(lambda: backend.diff(make_plan(netpair.server_v4))).in_sync
    ns.call(lambda: backend.status(make_plan(netpair.server_v4)))
    ns.call(backend.flush)
    assert tables("ip") == ["filter"] and tables("ip6") == []
