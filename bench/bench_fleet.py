"""Promotion propagation between two gateways sharing one Redis store (issue 15), measured in one
run inside namespaces this script creates.

Two serve processes, each in a gateway namespace of its own (its own kernel ruleset), on a bridge
with the clients and a real redis-server (tests/support/fleet.py). For each of COUNT offender
addresses (10.<n>.0.128 + i, in the policy's REJECT group with ``promote_after: 3``), three
rejected connections go to gateway 0; from the third reply on, raw SYNs (``syn_probe``: they never
reach serve, so they are no further offence) ask both kernels until each refuses the address:

- local: gateway 0's own promotion into its kernel (the baseline: offence count, then the
  reconciler's set update in a thread);
- remote: gateway 1 refusing the same host (published to the store, read by gateway 1's follower,
  applied by its reconciler). Goal (SPEC section 10): within a second.

Prints median and max of each over COUNT promotions and the remote/local ratio of the medians.
A probe answers in about a millisecond, so that is the resolution.

Usage: sudo .venv/bin/python bench/bench_fleet.py [COUNT]   (default 100; test addresses only)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fleet import Fleet, fleet, serve_gateway, syn_probe  # noqa: E402
from tests.support.redis import running_redis  # noqa: E402
from tests.support.serve import Served  # noqa: E402
from tests.support.serve_policy import PORT, REJECTED, policy_text  # noqa: E402

FIRST = 128  # offenders are 10.<n>.0.128 .. 10.<n>.0.(128 + COUNT - 1)
PROMOTE_FOR = 600  # long enough that no promotion ends during the run
TIMEOUT = 5.0  # seconds to wait for one kernel to refuse before calling it lost


def _until_refused(net: Fleet, source: str, since: float) -> list[float]:
    """Probe both gateways in turn until each refuses ``source``; seconds from ``since`` for each."""
    found: list[float | None] = [None, None]
    while None in found:
        elapsed = time.monotonic() - since
        if elapsed > TIMEOUT:
            raise RuntimeError(f"gateway(s) {[i for i, f in enumerate(found) if f is None]} did not refuse {source} "
                               f"within {TIMEOUT:.0f} s")
        for gateway, seen in enumerate(found):
            if seen is None and syn_probe(net.network, source, net.gateway_v4(gateway), PORT, timeout=0.2) == "refused":
                found[gateway] = time.monotonic() - since
    return [f for f in found if f is not None]


def _percentiles(name: str, values: list[float]) -> str:
    return f"{name:<38} median {statistics.median(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    if not 1 <= count <= 120:
        sys.exit("COUNT must be 1..120 (offender addresses .128 up to .247)")
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="np-bench-fleet-") as tmp, fleet(2) as net, \
            running_redis(net.network_v4, ns=net.network) as store:
        work = Path(tmp)
        offenders = [net.add_client_address(FIRST + i) for i in range(count)]
        text = policy_text("0.0.0.0", work / "maildir").replace(f"REJECTLIST: [{REJECTED}]", f"REJECTLIST: [{net.prefix}{FIRST}/25]")
        text = text.replace("promote_after: 3, promote_for: 3", f"promote_after: 3, promote_for: {PROMOTE_FOR}")
        text += f"state: {{redis: '{store.url}', prefix: 'bench:'}}\n"
        gateways: list[Served] = []
        try:
            for i in range(2):
                gateways.append(serve_gateway(net, i, work, text))
            local: list[float] = []
            remote: list[float] = []
            for offender in offenders:
                for _ in range(3):
                    seen = gateways[0].outcome(offender)
                    if seen != "554":
                        raise RuntimeError(f"{offender} on gateway 0: expected 554, saw {seen}")
                third = time.monotonic()
                own, other = _until_refused(net, offender, third)
                local.append(own)
                remote.append(other)
        finally:
            for served in gateways:
                served.stop()
    print(f"{count} promotions, two gateways, one redis-server, kernel {os.uname().release}")
    print(_percentiles("local (gateway 0's own kernel)", local))
    print(_percentiles("remote (gateway 1, through the store)", remote))
    print(f"remote/local median ratio: {statistics.median(remote) / statistics.median(local):.2f}x; "
          f"over 1 s: {sum(r > 1.0 for r in remote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
