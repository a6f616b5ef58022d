"""HAT lookup and compile figures for large sender groups (issue 2).

Builds a policy whose BLACKLIST holds N random IPv4 entries (hosts and /24../30 networks) and a
WHITELIST of 1,000 hosts before it, then prints, for each N:
- model build (entry parsing + pydantic) and HAT index build time,
- µs per HAT decision (random addresses, half of them inside the blacklist),
- compile time (refuse set with holes carved, merged into ranges) and the time to write those
  ranges as CIDR text (the ``compile --json`` form),
and, in the same run, two baselines: the standard library's ``ipaddress.collapse_addresses`` on
the same entries (compile) and a linear scan of ``ip_network`` objects (lookup, on 10k entries).

Usage: python bench/bench_policy.py [N ...]   (default: 100000 1000000)
"""

from __future__ import annotations

import ipaddress
import random
import sys
import time

from netpolicy.model.compiler import compile_policy
from netpolicy.model.hat import build_hat_indexes
from netpolicy.model.intervals import cidr_texts
from netpolicy.model.policy import Policy


def entries(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        a = rng.randrange(1 << 32)
        plen = rng.choice((32, 32, 32, 30, 28, 24))
        a = a >> (32 - plen) << (32 - plen)
        text = str(ipaddress.IPv4Address(a))
        out.append(text if plen == 32 else f"{text}/{plen}")
    return out


def policy_data(black: list[str], white: list[str]) -> dict:  # type: ignore[type-arg]
    return {
        "version": 1,
        "listeners": [{
            "name": "IncomingMail", "address": "127.0.0.1", "port": 2525,
            "hat": [{"group": "WHITELIST", "policy": "OK"}, {"group": "BLACKLIST", "policy": "BLOCKED"}, {"group": "ALL", "policy": "OK"}],
            "rat": [{"recipient": "ALL", "action": "accept"}],
        }],
        "sender_groups": {"WHITELIST": white, "BLACKLIST": black},
        "mail_flow_policies": {"OK": {"behavior": "accept"}, "BLOCKED": {"behavior": "tcprefuse"}},
    }


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def bench(n: int) -> None:
    rng = random.Random(n)
    black = entries(n, rng)
    white = [e.split("/")[0] for e in rng.sample(black, 1000)]
    policy, t_model = timed(lambda: Policy.model_validate(policy_data(black, white)))
    hats, t_index = timed(lambda: build_hat_indexes(policy))
    hat = hats["IncomingMail"]
    probes = [e.split("/")[0] for e in rng.sample(black, 50_000)]
    probes += [str(ipaddress.IPv4Address(rng.randrange(1 << 32))) for _ in range(50_000)]
    rng.shuffle(probes)
    _, t_lookup = timed(lambda: [hat.decide(a) for a in probes])
    plan, t_compile = timed(lambda: compile_policy(policy))
    nets = [ipaddress.ip_network(e) for e in black]
    _, t_collapse = timed(lambda: list(ipaddress.collapse_addresses(nets)))
    refuse = plan.listeners[0].refuse4
    cidrs, t_text = timed(lambda: cidr_texts(refuse))
    print(f"N={n:>9,}  model build {t_model:6.2f} s   HAT index {t_index:6.2f} s   "
          f"lookup {t_lookup / len(probes) * 1e6:5.2f} µs/decision")
    print(f"             compile {t_compile:6.2f} s -> {len(refuse):,} ranges, as CIDR text (compile --json) "
          f"+{t_text:5.2f} s -> {len(cidrs):,} CIDRs   baseline ipaddress.collapse_addresses {t_collapse:6.2f} s "
          f"(ratio {(t_compile + t_text) / t_collapse:.2f}x, ours also carves {len(white)} holes)")


def baseline_scan() -> None:
    rng = random.Random(1)
    nets = [ipaddress.ip_network(e) for e in entries(10_000, rng)]
    probes = [ipaddress.ip_address(rng.randrange(1 << 32)) for _ in range(200)]
    _, t = timed(lambda: [next((n for n in nets if a in n), None) for a in probes])
    print(f"baseline: linear scan of 10,000 ip_network entries: {t / len(probes) * 1e6:,.0f} µs/lookup")


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    baseline_scan()
    for size in sizes:
        bench(size)
