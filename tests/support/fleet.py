"""Several gateways and one network: server namespaces on a bridge in a shared namespace.

The shared namespace ("the network") holds a bridge with ``10.<n>.0.1/24``: clients connect
from there (from ``.1`` or any further address given to the bridge) and the state store
listens there. Gateway ``i`` is a namespace of its own with ``10.<n>.0.<i + 2>``, joined to the
bridge by a veth link, so each gateway's serve owns its own kernel ruleset. ``gateway(i)``
presents one as a ``NetPair`` (server: the gateway, client: the network), the shape ``Served``
runs in; ``serve_gateway`` starts serve in one (another can start later, as a gateway joining).

``syn_probe`` asks whether a gateway's kernel refuses a source at SYN without the gateway's
serve ever seeing a connection: a raw SYN, answered by RST (refused) or SYN-ACK (which the
probing side's own kernel resets, having no socket for it). A full connect would reach serve
and, for a host it rejects, count as one more offence.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Netns, NetPair, run
from tests.support.serve import Served
from tests.support.wait import wait_until

BRIDGE = "npbr0"
_counter = iter(range(1, 250))


@dataclass
class Fleet:
    network: Netns
    prefix: str  # "10.<n>.0."
    gateways: list[Netns] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # each gateway's interface name

    @property
    def network_v4(self) -> str:
        return self.prefix + "1"

    def gateway_v4(self, i: int) -> str:
        return f"{self.prefix}{i + 2}"

    def gateway(self, i: int) -> NetPair:
        return NetPair(self.gateways[i], self.network, self.links[i], BRIDGE, self.gateway_v4(i), self.network_v4, "", "")

    def add_client_address(self, last: int) -> str:
        """Another source address on the bridge, ``10.<n>.0.<last>`` (reachable, same subnet)."""
        address = f"{self.prefix}{last}"
        self.network.exec(["ip", "addr", "add", address + "/32", "dev", BRIDGE])
        return address


@contextlib.contextmanager
def fleet(gateways: int) -> Iterator[Fleet]:
    """The network namespace and ``gateways`` gateway namespaces; always deleted afterwards."""
    n = (os.getpid() + next(_counter) + 100) % 250 + 1
    network = Netns.create()
    made = Fleet(network, f"10.{n}.0.")
    try:
        network.exec(["ip", "link", "add", BRIDGE, "type", "bridge"])
        network.exec(["ip", "addr", "add", made.network_v4 + "/24", "dev", BRIDGE])
        network.exec(["ip", "link", "set", BRIDGE, "up"])
        for i in range(gateways):
            gw = Netns.create()
            made.gateways.append(gw)
            inner, outer = f"vg{gw.name[2:]}", f"vn{gw.name[2:]}"
            run(["ip", "link", "add", inner, "netns", gw.name, "type", "veth", "peer", "name", outer, "netns", network.name])
            made.links.append(inner)
            network.exec(["ip", "link", "set", outer, "master", BRIDGE, "up"])
            gw.exec(["ip", "addr", "add", made.gateway_v4(i) + "/24", "dev", inner])
            gw.exec(["ip", "link", "set", inner, "up"])
        for i in range(gateways):
            wait_until(lambda i=i: _reaches(made, i), f"gateway {i} to answer on the bridge", ignoring=(OSError,))
        yield made
    finally:
        for gw in made.gateways:
            gw.delete()
        network.delete()


def _reaches(made: Fleet, i: int) -> bool:
    """Nothing listens on the discard port: a refused connect proves the link carries packets."""
    try:
        made.network.connect((made.gateway_v4(i), 9), timeout=0.5).close()
    except ConnectionRefusedError:
        pass
    return True


def serve_gateway(made: Fleet, i: int, work: Path, policy: str) -> Served:
    """serve on gateway ``i`` under ``policy`` (its files in ``work/gw<i>``), READY when returned."""
    served = Served(made.gateway(i), work / f"gw{i}")
    served.tmp.mkdir(exist_ok=True)
    served.write_policy(text=policy)
    served.start()
    return served


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_probe(ns: Netns, source: str, address: str, port: int, timeout: float = 0.5) -> str:
    """One raw SYN from ``source`` (an address of ``ns``) to ``address:port``: "refused" (RST),
    "open" (SYN-ACK) or "silent"."""

    def probe() -> str:
        sport = random.randint(20000, 60000)
        seq = random.getrandbits(32)
        header = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
        pseudo = socket.inet_aton(source) + socket.inet_aton(address) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
        header = header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
            sock.bind((source, 0))
            sock.sendto(header, (address, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    packet = sock.recv(128)
                except TimeoutError:
                    break
                ihl = (packet[0] & 0x0F) * 4
                src = socket.inet_ntoa(packet[12:16])
                sp, dp, _, ack, _, flags = struct.unpack("!HHIIBB", packet[ihl:ihl + 14])
                if src != address or sp != port or dp != sport or ack != (seq + 1) & 0xFFFFFFFF:
                    continue
                if flags & 0x04:
                    return "refused"
                if flags & 0x12 == 0x12:
                    return "open"
        return "silent"

    return ns.call(probe)
