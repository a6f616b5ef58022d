"""Plans carry address ranges, not CIDR text: each backend stores them its own way (nftables
interval sets take a range as one element, ipset's hash:net its CIDR blocks) and enforces them
edge to edge."""

from __future__ import annotations

import pytest

from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan, ListenerPlan
from tests.support.kernel import BACKENDS, LISTENER, PORT, backend_in, listening, outcome
from tests.support.netns import NetPair

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_range_is_refused_edge_to_edge_and_can_grow_in_place(netpair: NetPair, backend_name: str) -> None:
    """Plans carry ranges: nftables holds 198.51.100.10-13 as one element, ipset as CIDR blocks.
    Grown to -14, the old and the new range share two blocks (10/31, 12/31), which must stay."""
    backend = backend_in(netpair.server, backend_name)
    first, last, grown, outside = (netpair.add_client_address(f"198.51.100.{i}") for i in (10, 13, 14, 15))
    before, after = (KernelPlan(gen, (ListenerPlan(LISTENER, netpair.server_v4, PORT, True, (Interval(4, 0xC633640A, end),)),))
                     for gen, end in (("g1", 0xC633640D), ("g2", 0xC633640E)))
    dest = (netpair.server_v4, PORT)
    with listening(netpair, netpair.server_v4):
        netpair.server.call(lambda: backend.apply(before))
        assert [outcome(netpair.client, dest, a) for a in (first, last, grown)] == ["refused", "refused", "connected"]
        assert netpair.server.call(lambda: backend.diff(before)).in_sync
        netpair.server.call(lambda: backend.apply(after))
        assert [outcome(netpair.client, dest, a) for a in (first, last, grown, outside)] == ["refused"] * 3 + ["connected"]
        assert netpair.server.call(lambda: backend.diff(after)).in_sync
