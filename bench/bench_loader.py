"""Wall time and peak RSS of ``netpolicy validate`` on a policy file with a large sender group.

Writes the policy of bench_policy.py (a BLACKLIST of N random IPv4 hosts and networks, block
style, one entry a line as an operator or a generator writes it) to a temporary file and runs the
real console script on it in a child process, so the figures include start-up and YAML parsing.

Usage: python -m bench.bench_loader [N ...]   (default: 1000000). The child is
``python -m netpolicy``, so ``PYTHONPATH=<another checkout>`` measures that checkout's loader.
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_policy import entries

NETPOLICY = [sys.executable, "-m", "netpolicy"]

HEAD = """\
version: 1
listeners:
  - name: IncomingMail
    address: 127.0.0.1
    port: 2525
    hat:
      - {group: BLACKLIST, policy: BLOCKED}
      - {group: ALL, policy: OK}
    rat:
      - {recipient: ALL, action: accept}
mail_flow_policies:
  OK: {behavior: accept}
  BLOCKED: {behavior: tcprefuse}
sender_groups:
  BLACKLIST:
"""


def write_policy(path: Path, n: int) -> None:
    with path.open("w") as fh:
        fh.write(HEAD)
        fh.writelines(f"    - {e}\n" for e in entries(n, random.Random(n)))


def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yml"
        write_policy(policy, n)
        size = policy.stat().st_size
        started = time.perf_counter()
        proc = subprocess.run([*NETPOLICY, "validate", "-p", str(policy)], capture_output=True, text=True)
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child so far, MiB
    print(f"N={n:>9,}  file {size / 2**20:5.1f} MiB  exit {proc.returncode}  wall {wall:5.2f} s  "
          f"peak RSS {peak:6.0f} MiB  {(proc.stdout or proc.stderr).strip()[:120]}")


if __name__ == "__main__":
    for size in [int(a) for a in sys.argv[1:]] or [1_000_000]:
        run(size)
