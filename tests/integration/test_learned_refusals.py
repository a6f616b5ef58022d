"""Learned refusals on a real kernel, both backends: an address learned into a listener's
``learned`` set is refused at SYN for its time and no longer; ``status`` counts it apart from
promotions; an apply of a new policy generation empties the learned set and keeps promotions,
one of the same generation keeps both; a flushed ruleset is repaired with the learned
entries back for the time they had left."""

from __future__ import annotations

import time

import pytest

from netpolicy.kernel.learning import Learning
from netpolicy.kernel.reconciler import Reconciler
from tests.support.kernel import (
    BACKENDS,
    LISTENER,
    PORT,
    backend_in,
    listening,
    make_plan,
    outcome,
)
from tests.support.netns import NetPair
from tests.support.wait import wait_until

pytestmark = pytest.mark.netns

LEARNED, LEARNED6, PROMOTED = "192.0.2.41", "2001:db8:beef::41", "192.0.2.42"
FLUSH = {
    "nftables": [["nft", "flush", "ruleset"]],
    "iptables": [["iptables-legacy", "-F"], ["iptables-legacy", "-X"], ["ip6tables-legacy", "-F"], ["ip6tables-legacy", "-X"],
                 ["ipset", "destroy"]],
}


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_learned_address_is_refused_at_syn_until_its_time_runs_out(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    learned = netpair.add_client_address(LEARNED)
    plan = make_plan(netpair.server_v4)
    netpair.server.call(lambda: backend.apply(plan))
    dest = (netpair.server_v4, PORT)
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, dest, learned) == "connected"
        netpair.server.call(lambda: backend.learn(LISTENER, {learned: 2}))
        learned_at = time.monotonic()
        assert outcome(netpair.client, dest, learned) == "refused"
        (found,) = netpair.server.call(backend.learned)
        assert (found.listener, found.address) == (LISTENER, learned) and 0 < found.expires_in <= 2
        assert netpair.server.call(backend.promoted) == []
        (status,) = netpair.server.call(lambda: backend.status(plan)).listeners
        assert status.set_sizes["learned4"] == 1 and status.set_sizes["promoted4"] == 0
        wait_until(lambda: outcome(netpair.client, dest, learned) == "connected", "the 2 s learned refusal to run out")
        assert time.monotonic() - learned_at > 1.5, "the learned refusal ended before its time"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_new_generation_empties_the_learned_sets_and_keeps_promotions(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    learned, promoted = netpair.add_client_address(LEARNED), netpair.add_client_address(PROMOTED)
    learned6 = netpair.add_client_address(LEARNED6)
    netpair.server.call(lambda: backend.apply(make_plan("::", "g1")))
    netpair.server.call(lambda: backend.learn(LISTENER, {learned: 300, learned6: 300}))
    netpair.server.call(lambda: backend.promote(LISTENER, promoted, 300))
    netpair.server.call(lambda: backend.apply(make_plan("::", "g1")))  # the same generation again
    assert {r.address for r in netpair.server.call(backend.learned)} == {learned, learned6}
    diff = netpair.server.call(lambda: backend.apply(make_plan("::", "g2")))
    assert not diff.in_sync
    assert netpair.server.call(backend.learned) == []
    assert [p.address for p in netpair.server.call(backend.promoted)] == [promoted]
    with listening(netpair, "::"):
        assert outcome(netpair.client, (netpair.server_v4, PORT), learned) == "connected"
        assert outcome(netpair.client, (netpair.server_v6, PORT), learned6) == "connected"
        assert outcome(netpair.client, (netpair.server_v4, PORT), promoted) == "refused"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_flushed_ruleset_is_repaired_with_the_learned_refusals_back(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    learned = netpair.add_client_address(LEARNED)
    plan = make_plan(netpair.server_v4)
    reconciler = Reconciler(backend, plan)
    netpair.server.call(reconciler.check_once)
    netpair.server.call(lambda: reconciler.learn([Learning(LISTENER, learned, 300, 0.0, plan.generation)]))
    for command in FLUSH[backend_name]:
        netpair.server.exec(command)
    assert netpair.server.call(backend.learned) == []
    assert netpair.server.call(reconciler.check_once).repaired
    (found,) = netpair.server.call(backend.learned)
    assert found.address == learned and 290 < found.expires_in <= 300
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, (netpair.server_v4, PORT), learned) == "refused"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_thousands_of_addresses_are_learned_in_one_call(netpair: NetPair, backend_name: str) -> None:
    """A flood's batch: one transaction (nftables) or one ipset restore for all of them."""
    backend = backend_in(netpair.server, backend_name)
    netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    hosts = {f"10.200.{i >> 8}.{i & 255}": 600 for i in range(5000)}
    started = time.perf_counter()
    netpair.server.call(lambda: backend.learn(LISTENER, hosts))
    elapsed = time.perf_counter() - started
    assert {r.address for r in netpair.server.call(backend.learned)} == set(hosts)
    assert elapsed < 5, f"learning 5,000 addresses took {elapsed:.2f} s"
