"""No open window: a refused host probing in a loop never gets through while the plan changes
under it 400 times (new generation each time, so rules are re-stamped too)."""

from __future__ import annotations

import pytest

from tests.support.kernel import (
    BACKENDS,
    BLOCKED_HOST,
    PORT,
    Prober,
    backend_in,
    listening,
    make_plan,
)
from tests.support.netns import NetPair

pytestmark = pytest.mark.netns


# The host's entry cycles through the host itself (hosts set) and three networks around it
# (networks set): it moves between the two sets both ways, and once per cycle a network is
# replaced by an overlapping one inside the networks set. Before the fix for moves (see
# nftables._element_phases) a few probes per 200 applies got through on nftables, but 20 applies
# often saw none, so the test applies 400 plans.
SHAPES = ((f"{BLOCKED_HOST}/32",), ("192.0.2.0/24",), ("192.0.2.64/26",), (f"{BLOCKED_HOST}/32",), ("192.0.2.66/31",))
APPLIES = 400


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_refused_host_never_connects_during_reapplies(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    plans = [
        make_plan(
            netpair.server_v4,
            generation=f"g{i}",
            refuse4=SHAPES[i % len(SHAPES)] + (f"198.51.100.{i % 250}/32",),  # and one other host changing
        )
        for i in range(APPLIES)
    ]
    prober = Prober(netpair.client, (netpair.server_v4, PORT), blocked)
    with listening(netpair, netpair.server_v4), prober.running():
        for plan in plans:
            result = netpair.server.call(lambda plan=plan: backend.apply(plan))
            assert not result.in_sync  # every apply really changed something
    assert prober.outcomes["connected"] == 0, prober.outcomes
    assert prober.outcomes["refused"] >= APPLIES, prober.outcomes  # it kept probing throughout
    assert prober.outcomes["timeout"] == 0 and prober.outcomes["error"] == 0, prober.outcomes
    assert netpair.server.call(lambda: backend.diff(plans[-1])).in_sync
