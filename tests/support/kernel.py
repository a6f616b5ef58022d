"""Shared pieces of the kernel integration tests: plans, backends inside a test's namespace,
connection outcomes, and snapshots of everything in a namespace that netpolicy does not own."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from netpolicy.kernel import KernelError, select_backend
from netpolicy.kernel.base import Backend
from netpolicy.model.intervals import Interval
from netpolicy.model.plan import KernelPlan, ListenerPlan
from tests.support.netns import Netns, NetPair

PORT = 2525
LISTENER = "IncomingMail"
BLOCKED_HOST = "192.0.2.66"
BLOCKED_NET = "198.51.100.0/24"
BLOCKED_NET_HOST = "198.51.100.7"
BLOCKED_HOST6 = "2001:db8:bad::66"
BLOCKED_NET6 = "2001:db8:bad::/48"
BACKENDS = ("nftables", "iptables")


def make_plan(address: str, generation: str = "g1", refuse4: tuple[str, ...] = (f"{BLOCKED_HOST}/32", BLOCKED_NET),
              refuse6: tuple[str, ...] = (BLOCKED_NET6,), port: int = PORT) -> KernelPlan:
    """A one-listener plan; the refuse lists are given as sorted, disjoint CIDRs."""
    v4, v6 = (tuple(map(Interval.from_cidr, cidrs)) for cidrs in (refuse4, refuse6))
    return KernelPlan(generation, (ListenerPlan(LISTENER, address, port, True, v4, v6),))


def backend_in(ns: Netns, name: str) -> Backend:
    """A backend for ``ns``, skipping the test when that backend cannot work on this machine."""
    try:
        return ns.call(lambda: select_backend(name))
    except KernelError as exc:  # no legacy ip_tables, no ipset ...
        pytest.skip(f"{name} backend unavailable here: {exc}")


def outcome(ns: Netns, dest: tuple[str, int], source: str | None = None, timeout: float = 2.0) -> str:
    """``connected``, ``refused`` (RST: ECONNREFUSED) or ``timeout``."""
    try:
        ns.connect(dest, source=source, timeout=timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    return "connected"


@contextmanager
def listening(pair: NetPair, address: str, port: int = PORT) -> Iterator[socket.socket]:
    """A listening socket in the server namespace, accepting (and closing) in the background."""
    sock = pair.server.listen(address, port)
    stop = threading.Event()

    def drain() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                sock.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield sock
    finally:
        stop.set()
        thread.join()
        sock.close()


PROBE_LOOP = """
import json, signal, socket, sys
dest, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in dest else socket.AF_INET
outcomes = {"connected": 0, "refused": 0, "timeout": 0, "error": 0}
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
ready = False
while not stop:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.bind((source, 0))
        try:
            sock.connect((dest, port))
            outcomes["connected"] += 1
        except ConnectionRefusedError:
            outcomes["refused"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        except OSError:
            outcomes["error"] += 1
    if not ready:
        print("ready", flush=True)
        ready = True
print(json.dumps(outcomes), flush=True)
"""


@dataclass
class Prober:
    """Connects from ``source`` to ``dest`` in a loop, in the client namespace, until stopped.

    It runs in a process of its own: as a thread it would share the interpreter lock with the
    applies it watches, and a busy apply loop starved it down to a tenth of its probes.
    """

    ns: Netns
    dest: tuple[str, int]
    source: str
    outcomes: dict[str, int] = field(default_factory=lambda: {"connected": 0, "refused": 0, "timeout": 0, "error": 0})

    @contextmanager
    def running(self) -> Iterator["Prober"]:
        proc = self.ns.popen([sys.executable, "-c", PROBE_LOOP, self.dest[0], str(self.dest[1]), self.source],
                             stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            yield self
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _err = proc.communicate(timeout=10)
        self.outcomes.update(json.loads(out))


def _strip_counters(text: str) -> str:
    return re.sub(r"\[\d+:\d+\]", "[]", "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))


def foreign_snapshot(ns: Netns) -> dict[str, str]:
    """Everything in the namespace's netfilter state that netpolicy does not own, as text:
    other nftables tables (with handles), iptables-legacy rules and chains without our chain and
    jump (counters stripped), and other ipsets with their members."""
    tables = [ln.split(maxsplit=1)[1] for ln in ns.exec(["nft", "list", "tables"]).stdout.splitlines() if ln.startswith("table ")]
    nft = "\n".join(ns.exec(["nft", "-a", "list", "table", *t.split()]).stdout for t in tables if t != "inet netpolicy")
    out = {"nft": nft}
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        saved = ns.exec([tool], check=False).stdout
        out[tool] = "\n".join(ln for ln in _strip_counters(saved).splitlines() if not re.search(r"\bNETPOLICY\b", ln))
    sets = [n for n in ns.exec(["ipset", "list", "-n"]).stdout.split() if not n.startswith("netpolicy")]
    out["ipset"] = "\n".join(ns.exec(["ipset", "save", n]).stdout for n in sets)
    return out


def add_foreign_state(ns: Netns) -> None:
    """Other people's firewall objects, some with names close to ours."""
    ns.exec(["nft", "-f", "-"], input="""
table inet filter {
    set trusted { type ipv4_addr; elements = { 192.0.2.1 } }
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 22 accept
        ip saddr @trusted counter accept
        ip saddr 198.51.100.99 counter drop
    }
}
table inet netpolicyx {
    chain c {
    }
}
table ip natlike {
    chain post {
        type nat hook postrouting priority 100;
    }
}
""")
    ns.exec(["ipset", "create", "other", "hash:ip"])
    ns.exec(["ipset", "add", "other", "192.0.2.1"])
    for cmd in (["-N", "FOREIGN"], ["-A", "FOREIGN", "-j", "RETURN"], ["-A", "INPUT", "-s", "198.51.100.99/32", "-j", "DROP"],
                ["-A", "INPUT", "-j", "FOREIGN"], ["-N", "NETPOLICY2"], ["-A", "INPUT", "-m", "set", "--match-set", "other", "src", "-j", "ACCEPT"]):
        ns.exec(["iptables-legacy", *cmd])
    ns.exec(["ip6tables-legacy", "-A", "INPUT", "-s", "2001:db8::99/128", "-j", "DROP"])
