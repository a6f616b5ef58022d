"""Several gateways and one network: server namespaces on a bridge in a shared namespace.

The shared namespace ("the network") holds a bridge with ``10.<n>.0.1/24``: clients connect
from there (from ``.1`` or any further address given to the bridge) and the state store
listens there. Gateway ``i`` is a namespace of its own with ``10.<n>.0.<i + 2>``, joined to the
bridge by a veth link, so each gateway's serve owns its own kernel ruleset. ``gateway(i)``
presents one as a ``NetPair`` (server: the gateway, client: the network), the shape ``Served``
runs in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.netns import Netns, NetPair, run
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
