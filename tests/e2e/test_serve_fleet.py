"""Gateways sharing promotions and the fleet view through one Redis store (SPEC.md section 10).

Each gateway runs serve in a namespace of its own (its own kernel ruleset) on a bridge; the
clients and a real redis-server sit on the bridge's side. Every gateway runs the same policy
file (listener on 0.0.0.0, one maildir), so they share one policy generation. A host rejected
three times on gateway 0 is promoted there; gateway 1's kernel must refuse it at SYN within a
second, probed by raw SYNs that never reach serve (a full connection would be one more offence
on gateway 1), and both release it when the time runs out. A third gateway started during the
promotion loads it from the store.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fleet import Fleet, fleet, serve_gateway, syn_probe
from tests.support.redis import RedisServer, running_redis
from tests.support.serve import NETPOLICY, Served
from tests.support.serve_policy import PORT, REJECTED, policy_text
from tests.support.wait import wait_until

pytestmark = pytest.mark.netns

PROMOTE_FOR = 8  # seconds: long enough for a late gateway to start and status to answer on a loaded machine


@dataclass
class Setup:
    net: Fleet
    store: RedisServer
    tmp: Path
    offender: str
    gateways: list[Served]

    def policy(self, extra: str = "") -> str:
        text = policy_text("0.0.0.0", self.tmp / "maildir").replace(f"REJECTLIST: [{REJECTED}]", f"REJECTLIST: [{self.offender}]")
        text = text.replace("promote_after: 3, promote_for: 3", f"promote_after: 3, promote_for: {PROMOTE_FOR}")
        return text + extra + f"state: {{redis: '{self.store.url}', prefix: 'fleet:'}}\n"

    def start(self, i: int) -> Served:
        served = serve_gateway(self.net, i, self.tmp, self.policy())
        self.gateways.append(served)
        return served

    def probe(self, i: int) -> str:
        return syn_probe(self.net.network, self.offender, self.net.gateway_v4(i), PORT, timeout=0.2)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with fleet(3) as net, running_redis(net.network_v4, ns=net.network) as store:
        made = Setup(net, store, tmp_path, net.add_client_address(77), [])
        try:
            made.start(0)
            made.start(1)
            yield made
        finally:
            for served in made.gateways:
                served.stop()


def _offend(setup: Setup) -> float:
    """Three rejected connections to gateway 0: it promotes the offender. Returns when the
    third reply arrived (monotonic)."""
    for _ in range(3):
        assert setup.gateways[0].outcome(setup.offender) == "554"
    return time.monotonic()


def test_a_host_promoted_on_one_gateway_is_refused_at_syn_on_the_other_then_released(setup: Setup) -> None:
    assert setup.probe(1) == "open"
    promoted_at = _offend(setup)
    wait_until(lambda: setup.probe(1) == "refused", "gateway 1 to refuse the host promoted on gateway 0", timeout=2)
    latency = time.monotonic() - promoted_at
    print(f"promotion on gateway 0 refused at SYN on gateway 1 after {latency * 1000:.0f} ms")
    assert latency < 1.0
    assert setup.probe(0) == "refused"
    assert "1 promoted from other gateways" in setup.gateways[1].stderr_text()
    wait_until(lambda: setup.probe(0) == "open" and setup.probe(1) == "open", "the promotion to end on both",
               timeout=PROMOTE_FOR + 3)
    assert time.monotonic() - promoted_at > PROMOTE_FOR - 1
    assert "Traceback" not in "".join(s.stderr_text() for s in setup.gateways)


def test_a_gateway_started_later_loads_the_promotions_still_running(setup: Setup) -> None:
    promoted_at = _offend(setup)
    wait_until(lambda: setup.probe(1) == "refused", "gateway 1 to refuse the host", timeout=2)
    late = setup.start(2)
    wait_until(lambda: setup.probe(2) == "refused", "the gateway started later to refuse the host", timeout=1)
    status = json.loads(late.pair.server.exec([NETPOLICY, "status", "-p", str(late.policy), "--json"]).stdout)
    left = PROMOTE_FOR - (time.monotonic() - promoted_at)
    assert [(p["address"], p["listener"]) for p in status["promoted"]] == [(setup.offender, "IncomingMail")]
    assert status["promoted"][0]["expires_in"] <= left + 1  # the time left, not a fresh promotion
    wait_until(lambda: setup.probe(2) == "open", "the promotion to end on the late gateway", timeout=PROMOTE_FOR + 3)


def _fleet_status(served: Served) -> tuple[int, dict[str, object]]:
    found = served.pair.server.exec([NETPOLICY, "status", "--fleet", "--json", "-p", str(served.policy)], check=False)
    return found.returncode, json.loads(found.stdout)


def test_status_fleet_lists_the_gateways_and_flags_one_on_an_older_policy(setup: Setup) -> None:
    first, second = setup.gateways
    code, view = _fleet_status(first)
    assert code == 0, view
    gateways = view["gateways"]
    assert isinstance(gateways, list)
    assert sorted(g["pid"] for g in gateways) == sorted([first.proc.pid, second.proc.pid])
    assert {g["generation"] for g in gateways} == {view["policy_generation"]}
    assert all(g["listeners"] == [f"IncomingMail 0.0.0.0:{PORT}"] and g["disagrees"] is None for g in gateways)

    old = view["policy_generation"]
    done = first.stderr_text().count("now at policy generation")
    first.write_policy(text=setup.policy("learn_refusals: 60\n"))
    first.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: first.stderr_text().count("now at policy generation") > done, "gateway 0's reload")
    code, view = _fleet_status(first)
    new = view["policy_generation"]
    assert code == 2 and new != old, view
    by_pid = {g["pid"]: g for g in view["gateways"]}  # type: ignore[union-attr]
    assert by_pid[first.proc.pid]["generation"] == new and by_pid[first.proc.pid]["disagrees"] is None
    assert by_pid[second.proc.pid]["disagrees"] == f"runs generation {old}, but this host's policy file is at {new}"
    text = first.pair.server.exec([NETPOLICY, "status", "--fleet", "-p", str(first.policy)], check=False)
    assert text.returncode == 2 and f"DISAGREES: runs generation {old}" in text.stdout, text.stdout

    second.proc.terminate()
    second.proc.wait(timeout=15)
    code, view = _fleet_status(first)
    assert code == 0 and [g["pid"] for g in view["gateways"]] == [first.proc.pid], view  # type: ignore[index]
