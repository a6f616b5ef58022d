"""``file:`` list figures (issue 12, "Speed"), each against a baseline measured in the same run.

    sudo .venv/bin/python bench/bench_lists.py [--lines N] [--yaml N]

Prints:
- ``netpolicy apply`` of a policy whose TCPREFUSE row is one ``file:`` list of N lines (default
  1M; 95% hosts, 5% networks, deterministic random), process wall and peak RSS, into an empty
  kernel in a namespace this script creates; against ``nft -f`` of the same elements (one
  interval set) and ``ipset restore`` of them (one ``hash:net`` set), in the same namespace
  (goal: < 5 s, < 1 GiB, no slower than ``nft -f``);
- where the time of that apply goes, in-process: load (of which the list parse), compile, kernel;
- a reload after one line was added to the list (renamed over it): load + compile of the changed
  policy in the same process, which is what serve does before it sends the difference;
- HAT lookup time with that list (goal: < 20 µs);
- ``netpolicy apply`` of a policy with the same kind of entries, M of them inside the YAML
  (default 100k; goal: < 1 s), and where its time goes (cProfile, in-process).

Addresses are random across the whole IPv4 space, but only inside the script's namespace's
ruleset: nothing outside that namespace is touched, and the namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netpolicy.kernel import select_backend  # noqa: E402
from netpolicy.model.compiler import compile_policy  # noqa: E402
from netpolicy.model.hat import build_hat_indexes  # noqa: E402
from netpolicy.model.loader import load_policy  # noqa: E402
from tests.support.netns import Netns  # noqa: E402

T = TypeVar("T")
NETPOLICY = str(ROOT / ".venv" / "bin" / "netpolicy")

POLICY = """\
version: 1
listeners:
  - name: Bench
    address: 10.0.0.1
    port: 25
    hat:
      - {{group: WHITELIST, policy: OK}}
      - {{group: BLACKLIST, policy: BLOCKED}}
      - {{group: ALL, policy: OK}}
    rat: [{{recipient: ALL, action: accept}}]
sender_groups:
  WHITELIST: [{whitelist}]
  BLACKLIST:
{blacklist}
mail_flow_policies:
  OK: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
"""


KEPT_OUT = (int(ipaddress.IPv4Address("10.0.0.1")), int(ipaddress.IPv4Address("192.0.2.99")))


def entries(n: int, seed: int) -> list[str]:
    """``n`` entries: 95% single hosts, 5% networks (/16 to /30), random over the IPv4 space."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        value = rng.randrange(1 << 32)
        length = rng.choice((16, 20, 24, 24, 28, 30)) if rng.random() < 0.05 else 32
        value = value >> (32 - length) << (32 - length)
        if any(value <= probe <= value | ((1 << (32 - length)) - 1) for probe in KEPT_OUT):
            continue  # the bench's listener and its probing client stay unlisted
        out.append(str(ipaddress.IPv4Address(value)) + ("" if length == 32 else f"/{length}"))
    return out


def write_policy(folder: Path, listed: list[str], in_yaml: bool) -> Path:
    whitelist = ", ".join(e for e in listed[:2000:2] if "/" not in e)  # 1,000 holes, as in real policies
    if in_yaml:
        blacklist = "".join(f"    - {e}\n" for e in listed)
    else:
        (folder / "drop.txt").write_text("# bench list\n" + "\n".join(listed) + "\n")
        blacklist = '    - "file:drop.txt"\n'
    path = folder / ("policy-yaml.yml" if in_yaml else "policy.yml")
    path.write_text(POLICY.format(whitelist=whitelist, blacklist=blacklist))
    return path


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def child(ns: Netns, args: list[str], stdin: str | None = None) -> tuple[float, float]:
    """Run ``args`` in the namespace: (process wall in s, peak RSS in MiB). ``ip netns exec``
    execs the command in the same process, so wait4's usage is the command's."""
    start = time.perf_counter()
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stdin:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {err.strip()[:500]}")
    return wall, usage.ru_maxrss / 1024


def nft_script(listed: list[str]) -> str:
    return ("table inet netpolicy_bench {\n  set refuse { type ipv4_addr; flags interval; auto-merge; elements = {\n"
            + ",\n".join(listed) + "\n  } }\n}\n")


def ipset_script(listed: list[str]) -> str:
    return f"create netpolicy-bench hash:net maxelem {2 * len(listed)}\n" + "".join(f"add netpolicy-bench {e}\n" for e in listed)


def bench_file(folder: Path, ns: Netns, n: int) -> None:
    listed = entries(n, seed=n)
    path = write_policy(folder, listed, in_yaml=False)
    print(f"{n:,}-line list ({sum('/' in e for e in listed):,} networks), policy file -> kernel, in one namespace:", flush=True)
    wall, rss = child(ns, [NETPOLICY, "apply", "--backend", "nftables", "-p", str(path)])
    child(ns, [NETPOLICY, "flush", "--backend", "nftables"])
    nft_wall, nft_rss = child(ns, ["nft", "-f", "-"], stdin=nft_script(listed))
    child(ns, ["nft", "delete", "table", "inet", "netpolicy_bench"])
    ips_wall, ips_rss = child(ns, ["ipset", "restore", "-exist"], stdin=ipset_script(listed))  # -exist: a list repeats hosts
    child(ns, ["ipset", "destroy", "netpolicy-bench"])
    print(f"  netpolicy apply  {wall:6.2f} s  {rss:6.0f} MiB peak RSS")
    print(f"  nft -f           {nft_wall:6.2f} s  {nft_rss:6.0f} MiB   (netpolicy/nft: {wall / nft_wall:.2f}x time, {rss / nft_rss:.2f}x memory)")
    print(f"  ipset restore    {ips_wall:6.2f} s  {ips_rss:6.0f} MiB   (netpolicy/ipset: {wall / ips_wall:.2f}x time)", flush=True)

    # where the time goes, in this process (cold: the list is not cached yet in this process)
    policy, t_load = timed(lambda: load_policy(path))
    plan, t_compile = timed(lambda: compile_policy(policy))
    backend = ns.call(lambda: select_backend("nftables"))
    _, t_kernel = timed(lambda: ns.call(lambda: backend.apply(plan)))
    print(f"  in-process: load {t_load:5.2f} s (list parse included), compile {t_compile:5.2f} s, kernel apply {t_kernel:5.2f} s")

    # one line added, renamed over the list: what a reload computes before the kernel diff
    text = (folder / "drop.txt").read_text() + "192.0.2.99\n"
    (folder / "drop.new").write_text(text)
    os.rename(folder / "drop.new", folder / "drop.txt")
    changed, t_reload = timed(lambda: load_policy(path))
    new_plan, t_recompile = timed(lambda: compile_policy(changed))
    _, t_delta = timed(lambda: ns.call(lambda: backend.apply(new_plan)))
    print(f"  one line added: load {t_reload:5.2f} s + compile {t_recompile:5.2f} s = {t_reload + t_recompile:5.2f} s in-process, "
          f"then the kernel delta {t_delta:5.3f} s")
    unchanged, t_same = timed(lambda: load_policy(path))
    print(f"  reload with the list unchanged (cached): load {t_same:5.2f} s")
    ns.call(backend.flush)

    hats, t_index = timed(lambda: build_hat_indexes(unchanged))
    hat = hats["Bench"]
    rng = random.Random(7)
    probes = [e.split("/")[0] for e in rng.sample(listed, 50_000)] + [str(ipaddress.IPv4Address(rng.randrange(1 << 32))) for _ in range(50_000)]
    _, t_lookup = timed(lambda: [hat.decide(a) for a in probes])
    print(f"  HAT index {t_index:5.2f} s; lookup {t_lookup / len(probes) * 1e6:5.2f} µs per decision (half of them listed)", flush=True)


def bench_serve_reload(folder: Path, ns: Netns) -> None:
    """What an operator sees: serve runs the policy with the list; one line is added and the
    list renamed over; how long until a client from that address is refused at SYN. The
    client connects from the namespace's own loopback to the listener, so the kernel's input
    hook sees it like any other (a 220 from serve before, ECONNREFUSED after)."""
    added, listener = "192.0.2.99", ("10.0.0.1", 25)
    ns.exec(["ip", "addr", "add", "10.0.0.1/32", "dev", "lo"], check=False)
    ns.exec(["ip", "addr", "add", f"{added}/32", "dev", "lo"], check=False)
    ns.exec(["ip", "link", "set", "lo", "up"])
    policy = folder / "policy.yml"
    lines = (folder / "drop.txt").read_text().replace(f"{added}\n", "")
    (folder / "drop.txt").write_text(lines)

    def outcome() -> str:
        try:
            with ns.connect(listener, source=added, timeout=2.0) as sock:
                return sock.recv(3).decode()
        except ConnectionRefusedError:
            return "refused"

    err = open(folder / "serve.err", "wb")
    started = time.perf_counter()
    proc = ns.popen([NETPOLICY, "serve", "-p", str(policy), "--mail-log", str(folder / "mail.log")],
                    stdout=subprocess.DEVNULL, stderr=err)
    try:
        while "kernel at policy generation" not in (folder / "serve.err").read_text() or outcome() != "220":
            if proc.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(f"serve did not start (exit {proc.poll()}): " + (folder / "serve.err").read_text()[-1500:])
            time.sleep(0.05)
        ready = time.perf_counter() - started
        (folder / "drop.new").write_text(lines + f"{added}\n")
        renamed = time.perf_counter()
        os.rename(folder / "drop.new", folder / "drop.txt")
        while outcome() != "refused":
            if time.perf_counter() - renamed > 30:
                raise RuntimeError("the added line never reached the kernel")
            time.sleep(0.005)
        took = time.perf_counter() - renamed
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err.close()
        ns.exec([NETPOLICY, "flush", "--backend", "nftables"], check=False)
    print(f"  serve: ready with the list in {ready:5.2f} s; one line added and renamed over: refused at SYN "
          f"{took:5.2f} s after the rename (goal < 1 s; serve polls the files every 0.5 s)", flush=True)


def bench_yaml(folder: Path, ns: Netns, n: int) -> None:
    listed = entries(n, seed=n + 1)
    path = write_policy(folder, listed, in_yaml=True)
    wall, rss = child(ns, [NETPOLICY, "apply", "--backend", "nftables", "-p", str(path)])
    child(ns, [NETPOLICY, "flush", "--backend", "nftables"])
    nft_wall, _ = child(ns, ["nft", "-f", "-"], stdin=nft_script(listed))
    child(ns, ["nft", "delete", "table", "inet", "netpolicy_bench"])
    start, _ = child(ns, [sys.executable, "-c", "import pydantic, yaml"])
    print(f"{n:,} entries inside the YAML: netpolicy apply {wall:5.2f} s, {rss:4.0f} MiB "
          f"(nft -f of the same: {nft_wall:5.2f} s; python -c 'import pydantic, yaml': {start:4.2f} s)")
    profile = cProfile.Profile()
    backend = ns.call(lambda: select_backend("nftables"))
    profile.enable()
    policy, t_load = timed(lambda: load_policy(path))
    plan, t_compile = timed(lambda: compile_policy(policy))
    _, t_kernel = timed(lambda: ns.call(lambda: backend.apply(plan)))
    profile.disable()
    ns.call(backend.flush)
    print(f"  in-process under cProfile: load {t_load:5.2f} s, compile {t_compile:5.2f} s, kernel apply {t_kernel:5.2f} s; top functions:")
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the file: list")
    parser.add_argument("--yaml", type=int, default=100_000, help="entries inside the YAML")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs): every figure "
          "below is from this run, with its baseline beside it", flush=True)
    ns = Netns.create()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-lists-") as folder:
            bench_file(Path(folder), ns, args.lines)
            bench_serve_reload(Path(folder), ns)
            bench_yaml(Path(folder), ns, args.yaml)
    finally:
        ns.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
