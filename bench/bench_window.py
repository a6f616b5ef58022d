"""Open-window stress: a refused host probes in a loop while plans are applied back to back.

    sudo .venv/bin/python bench/bench_window.py [--backend nftables|iptables] [--applies N] [--runs R]
                                                [--shapes move|cycle|same|fixed] [--same-generation]

Each apply changes where the prober's address (192.0.2.66) is refused, and one other host:
- move:  the host itself (hosts set) and the /24 around it (networks set), alternately;
- cycle: the host, the /24, a /26, the host, a /31 (moves both ways, and a network replaced
         by an overlapping one inside the networks set);
- same:  a /24, /26, /31 and /25 in turn (always inside the networks set);
- fixed: the host stays where it is (only the other host, and the generation, change).
Every plan has a new generation (rules re-stamped) unless --same-generation is given.

Prints, per run, how many probes connected (must be 0), were refused, timed out or failed,
and the totals. The figure to quote is connected / applies over all runs. Namespaces are
created and deleted here; nothing outside them is touched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netpolicy.kernel import select_backend  # noqa: E402
from netpolicy.model.plan import KernelPlan  # noqa: E402
from tests.support.kernel import (  # noqa: E402
    BLOCKED_HOST,
    PORT,
    Prober,
    listening,
    make_plan,
)
from tests.support.netns import net_pair  # noqa: E402

SHAPES: dict[str, tuple[tuple[str, ...], ...]] = {
    "move": ((f"{BLOCKED_HOST}/32",), ("192.0.2.0/24",)),
    "cycle": ((f"{BLOCKED_HOST}/32",), ("192.0.2.0/24",), ("192.0.2.64/26",), (f"{BLOCKED_HOST}/32",), ("192.0.2.66/31",)),
    "same": (("192.0.2.0/24",), ("192.0.2.64/26",), ("192.0.2.66/31",), ("192.0.2.0/25",)),
    "fixed": ((f"{BLOCKED_HOST}/32",),),
}


def one_run(backend_name: str, shapes: tuple[tuple[str, ...], ...], applies: int, same_generation: bool) -> dict[str, int]:
    with net_pair() as pair:
        backend = pair.server.call(lambda: select_backend(backend_name))
        blocked = pair.add_client_address(BLOCKED_HOST)
        pair.server.call(lambda: backend.apply(make_plan(pair.server_v4)))

        def plan(i: int) -> KernelPlan:
            refuse = shapes[i % len(shapes)] + (f"198.51.100.{i % 250}/32",)
            return make_plan(pair.server_v4, generation="g" if same_generation else f"g{i}", refuse4=refuse)

        plans = [plan(i) for i in range(applies)]
        prober = Prober(pair.client, (pair.server_v4, PORT), blocked)
        with listening(pair, pair.server_v4), prober.running():
            for p in plans:
                pair.server.call(lambda p=p: backend.apply(p))
        return prober.outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["nftables", "iptables"], default="nftables")
    parser.add_argument("--applies", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="cycle")
    parser.add_argument("--same-generation", action="store_true")
    args = parser.parse_args()
    totals = {"connected": 0, "refused": 0, "timeout": 0, "error": 0}
    for run in range(args.runs):
        start = time.perf_counter()
        outcomes = one_run(args.backend, SHAPES[args.shapes], args.applies, args.same_generation)
        for key, value in outcomes.items():
            totals[key] += value
        print(f"run {run + 1}: {args.applies} applies in {time.perf_counter() - start:.1f} s, {outcomes}", flush=True)
    probes = sum(totals.values())
    print(f"{args.backend} {args.shapes}{' same-generation' if args.same_generation else ''}: "
          f"{totals['connected']} connected in {args.runs * args.applies} applies ({probes:,} probes), {totals}")
    return 0 if totals["connected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
