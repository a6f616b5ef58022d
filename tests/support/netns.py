"""Network namespaces for tests: real kernels, never the host's own ruleset.

Every namespace a test makes has a unique ``np<hex>`` name and is deleted by the fixture that
made it, even when the test fails. Sockets can be opened *inside* a namespace from this
process: a short-lived thread enters the namespace (setns is per thread), creates the socket
and leaves; the socket stays bound to that namespace, so asyncio servers and smtplib clients in
the test process talk across a real veth link.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from tests.support.wait import wait_until

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run(args: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; raise with stderr on failure."""
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unique_name(prefix: str = "np") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@dataclass
class Netns:
    """One network namespace created (and owned) by a test."""

    name: str

    @classmethod
    def create(cls, name: str | None = None) -> "Netns":
        ns = cls(name or unique_name())
        run(["ip", "netns", "add", ns.name])
        ns.exec(["ip", "link", "set", "lo", "up"])
        return ns

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def exec(self, args: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *args], check=check, input=input)

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)  # type: ignore[call-overload]

    def enter(self) -> None:
        """Move the calling thread into this namespace (setns is per thread)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def executor(self) -> ThreadPoolExecutor:
        """A one-thread executor whose thread lives in this namespace, for work that runs in
        the background (a reconciler loop, a prober); the caller shuts it down."""
        return ThreadPoolExecutor(max_workers=1, initializer=self.enter, thread_name_prefix=self.name)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread that has entered this namespace; return its result."""
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                self.enter()
                result.append(fn())
            except BaseException as exc:  # re-raised in the caller
                error.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this namespace."""
        return self.call(lambda: socket.socket(family, type))

    def connect(self, dest: tuple[str, int], source: str | None = None, timeout: float = 3.0) -> socket.socket:
        """A TCP connection made from this namespace, optionally from a given source address."""
        family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
        sock = self.socket(family)
        sock.settimeout(timeout)
        try:
            if source:
                sock.bind((source, 0))
            sock.connect(dest)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, address: str, port: int, backlog: int = 128) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = self.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(backlog)
        return sock

    def tcp_connections(self) -> list[str]:
        """TCP sockets in this namespace other than listeners (ESTAB, CLOSE-WAIT, LAST-ACK ...),
        as ``ss`` lines: empty once every connection is closed on this side."""
        lines = self.exec(["ss", "-Htan"]).stdout.splitlines()
        return [line for line in lines if not line.startswith("LISTEN")]

    def delete(self) -> None:
        # Processes left in the namespace would keep it alive; kill them first.
        pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        run(["ip", "netns", "del", self.name], check=False)


@dataclass
class NetPair:
    """A server and a client namespace joined by one veth link.

    The server side holds ``10.<n>.0.1/24`` and ``2001:db8:<n>::1/64``, the client side ``.2`` /
    ``::2``. ``add_client_address`` gives the client further source addresses (from any test
    range) and routes them back from the server, so a test can connect "from" a blocked host.
    """

    server: Netns
    client: Netns
    server_if: str
    client_if: str
    server_v4: str
    client_v4: str
    server_v6: str
    client_v6: str
    extra: list[str] = field(default_factory=list)

    def add_client_address(self, address: str) -> str:
        self.extra.append(address)
        return _add_host_address(self.client, self.client_if, self.server, self.server_if, address)

    def add_server_address(self, address: str) -> str:
        return _add_host_address(self.server, self.server_if, self.client, self.client_if, address)


def _add_host_address(ns: Netns, ifname: str, peer: Netns, peer_if: str, address: str) -> str:
    """Put ``address`` on ``ns`` and route it from ``peer`` over the link (on-link, no gateway)."""
    is6 = ":" in address
    prefix = "/128" if is6 else "/32"
    ns.exec(["ip", "addr", "add", address + prefix, "dev", ifname, *(["nodad"] if is6 else [])])
    peer.exec(["ip", "route", "add", address + prefix, "dev", peer_if])
    return address


_pair_counter = iter(range(1, 250))


@contextlib.contextmanager
def net_pair() -> Iterator[NetPair]:
    """Create two namespaces joined by veth; always delete them afterwards."""
    n = (os.getpid() + next(_pair_counter)) % 250 + 1
    server = Netns.create()
    client: Netns | None = None
    try:
        client = Netns.create()
        sif, cif = f"vs{server.name[2:]}", f"vc{client.name[2:]}"
        run(["ip", "link", "add", sif, "netns", server.name, "type", "veth", "peer", "name", cif, "netns", client.name])
        pair = NetPair(server, client, sif, cif, f"10.{n}.0.1", f"10.{n}.0.2", f"2001:db8:{n:x}::1", f"2001:db8:{n:x}::2")
        for ns, ifname, v4, v6 in ((server, sif, pair.server_v4, pair.server_v6), (client, cif, pair.client_v4, pair.client_v6)):
            ns.exec(["ip", "addr", "add", v4 + "/24", "dev", ifname])
            ns.exec(["ip", "addr", "add", v6 + "/64", "dev", ifname, "nodad"])
            ns.exec(["ip", "link", "set", ifname, "up"])
        wait_until(lambda: _link_carries(pair), "the veth link to carry packets", ignoring=(OSError,))
        yield pair
    finally:
        if client is not None:
            client.delete()
        server.delete()


def _link_carries(pair: NetPair) -> bool:
    """Nothing listens on the discard port: a refused connect proves the link carries packets."""
    try:
        pair.client.connect((pair.server_v4, 9), timeout=0.5).close()
    except ConnectionRefusedError:
        pass
    return True
