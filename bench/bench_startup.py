"""Start-up cost of the small commands, against ``python -c 'import pydantic, yaml'`` in the same run.

Each command runs as a whole process, alternating with the baseline (A B A B ...), so the ratio
is taken pair by pair and holds when the machine's speed drifts; the medians are printed. The
goal (issue 11): ``validate`` of the example policy and ``schema`` within 1.5x of the baseline.

Besides the commands, the rows that make up ``validate``'s floor while pydantic validates the
policy: pydantic's BaseModel machinery (``import pydantic`` alone leaves it unloaded), and the
policy model's classes built on top of it.

Usage: python bench/bench_startup.py [RUNS]   (default 15)
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BASELINE = [PY, "-c", "import pydantic, yaml"]
EXAMPLE = str(ROOT / "examples" / "policy.yml")
# The console script installed next to this interpreter, as a user runs it (else python -m).
SCRIPT = Path(PY).with_name("netpolicy")
NETPOLICY = [str(SCRIPT)] if SCRIPT.exists() else [PY, "-m", "netpolicy"]
COMMANDS = {
    "netpolicy validate -p examples/policy.yml": [*NETPOLICY, "validate", "-p", EXAMPLE],
    "netpolicy schema": [*NETPOLICY, "schema"],
    "netpolicy --help": [*NETPOLICY, "--help"],
    "floor: import yaml + pydantic.BaseModel": [PY, "-c", "import yaml; from pydantic import BaseModel"],
    "floor: + the policy model's classes": [PY, "-c", "import yaml; import netpolicy.model.policy"],
    "floor: + click": [PY, "-c", "import click, yaml; import netpolicy.model.policy"],
}


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare(argv: list[str], runs: int) -> tuple[float, float, float, float]:
    """Median wall and CPU of ``argv``, median wall of the baseline, median of the paired ratios."""
    run_once(argv), run_once(BASELINE)  # warm the page cache and the bytecode caches
    walls, cpus, base_walls, ratios = [], [], [], []
    for _ in range(runs):
        wall, cpu = run_once(argv)
        base, _ = run_once(BASELINE)
        walls.append(wall)
        cpus.append(cpu)
        base_walls.append(base)
        ratios.append(wall / base)
    return statistics.median(walls), statistics.median(cpus), statistics.median(base_walls), statistics.median(ratios)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    print(f"{runs} runs each, alternating with the baseline {' '.join(BASELINE[1:])!r}; medians")
    print(f"{'command':45} {'wall s':>8} {'cpu s':>8} {'baseline':>9} {'ratio':>6}")
    for label, argv in COMMANDS.items():
        wall, cpu, base, ratio = compare(argv, runs)
        print(f"{label:45} {wall:8.3f} {cpu:8.3f} {base:9.3f} {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
