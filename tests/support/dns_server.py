"""A real authoritative DNS server the tests start: dnslib's UDP and TCP servers answering from
zones described in Python, and the ``dns_server`` fixture.

A packaged server (dnsmasq, knot) answers what its zone files say; the resolver's tests also
need a chosen name to fail (SERVFAIL), to go unanswered, or to answer late, and they need to
count the queries each name received to prove what the cache saves. Each query is answered in
its own thread (dnslib's servers are socketserver's threading servers), so a delayed name does
not hold up the others, which is what a test of parallel lookups needs.

The server binds on a loopback address of its own (``dns_server``), or, for ``netpolicy serve``
in a namespace, on port 53 inside that namespace with ``resolv_conf`` naming it: ``ip netns exec``
bind-mounts ``/etc/netns/NS/resolv.conf`` over ``/etc/resolv.conf``, so serve's resolver finds
the test's server through the ordinary system configuration.

Zones hold any record type in ``RECORD_TYPES`` (TXT too, for sender-authentication zones); names
are absolute, without the final dot. Answers follow real authoritative servers: a CNAME chain
inside the served zones is followed in the answer section, a name that does not exist is
NXDOMAIN with the zone's SOA in the authority section (a resolver's negative TTL, RFC 2308), a
name without the asked type is an empty answer with that SOA, a name outside every zone REFUSED.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.reversename
import pytest
from dnslib import AAAA, CNAME, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSError, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, TCPServer, UDPServer

from netpolicy.smtp.resolver import DnsResolver
from tests.support.netns import Netns

log = logging.getLogger(__name__)

RECORD_TYPES: dict[str, Callable[[str], Any]] = {
    "A": A,
    "AAAA": AAAA,
    "PTR": PTR,
    "CNAME": CNAME,
    # one TXT record may be longer than a DNS character-string (DKIM keys are): split in 255s
    "TXT": lambda value: TXT([value[i:i + 255] for i in range(0, max(len(value), 1), 255)]),
}
_MAX_CHAIN = 8


@dataclass(frozen=True)
class Record:
    name: str
    type: str  # a key of RECORD_TYPES
    value: str
    ttl: int = 300


@dataclass(frozen=True)
class Zone:
    origin: str
    records: Sequence[Record]
    negative_ttl: int = 60  # the SOA's TTL and minimum: how long a resolver holds a negative answer


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def reverse_name(address: str) -> str:
    """The PTR owner name of an address (``1.2.0.192.in-addr.arpa``, nibbles for IPv6)."""
    return _norm(dns.reversename.from_address(address).to_text())


def dnslist_name(address: str, zone: str) -> str:
    """The name a DNS list answers for an address: its reversed octets (or nibbles) under ``zone``."""
    owner = reverse_name(address).removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{owner}.{_norm(zone)}"


class _Unanswered(DNSError):
    """Raised for a query that gets no reply: dnslib's handler catches DNSError and sends nothing."""


class _ZoneResolver:
    """dnslib's resolver interface (``resolve(request, handler) -> reply``) over the served zones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.zones: dict[str, Zone] = {}
        self.names: dict[str, list[Record]] = {}
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.delay: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.stopping = threading.Event()

    def _zone_of(self, name: str) -> Zone | None:
        labels = name.split(".")
        for i in range(len(labels)):
            zone = self.zones.get(".".join(labels[i:]))
            if zone is not None:
                return zone
        return None

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname, qtype = _norm(str(request.q.qname)), QTYPE[request.q.qtype]
        with self.lock:
            self.counts[qname] += 1
            delay = self.delay.get(qname, 0.0)
            dropped, failing = qname in self.drop, qname in self.servfail
        if dropped:
            raise _Unanswered(f"{qname} is never answered")
        if delay and self.stopping.wait(delay):  # the delay is the behaviour under test
            raise _Unanswered("server stopped")
        reply = request.reply()
        if failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        name, zone = qname, self._zone_of(qname)
        if zone is None:
            reply.header.rcode = RCODE.REFUSED
            return reply
        reply.header.aa = 1
        for _ in range(_MAX_CHAIN):
            records = self.names.get(name, [])
            cname = next((r for r in records if r.type == "CNAME"), None)
            if cname is None or qtype == "CNAME":
                break
            reply.add_answer(_rr(cname))
            name, zone = _norm(cname.value), self._zone_of(_norm(cname.value))
            if zone is None:
                return reply  # the rest of the chain is another server's
        answers = [r for r in records if r.type == qtype]
        for record in answers:
            reply.add_answer(_rr(record))
        if not answers:
            if not records:
                reply.header.rcode = RCODE.NXDOMAIN
            origin = zone.origin
            soa = SOA(f"ns.{origin}", f"hostmaster.{origin}", (1, 3600, 600, 86400, zone.negative_ttl))
            reply.add_auth(RR(origin, QTYPE.SOA, rdata=soa, ttl=zone.negative_ttl))
        return reply


def _rr(record: Record) -> RR:
    return RR(record.name, getattr(QTYPE, record.type), rdata=RECORD_TYPES[record.type](record.value), ttl=record.ttl)


class DnsServer:
    """One server on ``address`` (UDP and TCP on the same port; port 0: a free one), its sockets
    opened inside ``netns`` when given. Zones and behaviours can change while it runs."""

    def __init__(self, address: str, port: int = 0, netns: Netns | None = None) -> None:
        self.address = address
        self.port = port
        self._netns = netns
        self._resolver = _ZoneResolver()
        self._servers: list[UDPServer | TCPServer] = []
        self._threads: list[threading.Thread] = []

    def load(self, *zones: Zone) -> None:
        """Serve these zones (in addition to those already loaded; a zone loaded again is replaced)."""
        for zone in zones:
            origin = _norm(zone.origin)
            for record in zone.records:
                name = _norm(record.name)
                if record.type not in RECORD_TYPES:
                    raise ValueError(f"{record.type}: not one of {sorted(RECORD_TYPES)}")
                if name != origin and not name.endswith("." + origin):
                    raise ValueError(f"{record.name} is not in the zone {zone.origin}")
            with self._resolver.lock:
                self._resolver.zones[origin] = Zone(origin, zone.records, zone.negative_ttl)
                self._resolver.names = {}
                for served in self._resolver.zones.values():
                    for record in served.records:
                        self._resolver.names.setdefault(_norm(record.name), []).append(record)

    def servfail(self, *names: str) -> None:
        """Answer SERVFAIL for these names."""
        with self._resolver.lock:
            self._resolver.servfail.update(map(_norm, names))

    def drop(self, *names: str) -> None:
        """Never answer queries for these names."""
        with self._resolver.lock:
            self._resolver.drop.update(map(_norm, names))

    def delay(self, seconds: float, *names: str) -> None:
        """Answer queries for these names ``seconds`` late."""
        with self._resolver.lock:
            self._resolver.delay.update(dict.fromkeys(map(_norm, names), seconds))

    def queries(self, name: str) -> int:
        """How many queries (any type, UDP or TCP) asked about ``name``."""
        with self._resolver.lock:
            return self._resolver.counts[_norm(name)]

    def stub(self, timeout: float = 1.0) -> dns.asyncresolver.Resolver:
        """A stub resolver asking this server only."""
        stub = dns.asyncresolver.Resolver(configure=False)
        stub.nameservers = [self.address]
        stub.port = self.port
        stub.lifetime = timeout
        return stub

    def resolver(self, timeout: float = 1.0) -> DnsResolver:
        """netpolicy's resolver, asking this server only."""
        return DnsResolver(timeout=timeout, resolver=self.stub(timeout))

    def _bind(self) -> tuple[UDPServer, TCPServer]:
        """Both sockets on one port: with port 0, the UDP socket picks it and TCP takes the same
        (another socket may hold that TCP port: then try another)."""
        for _ in range(20):
            udp = UDPServer((self.address, self.port), DNSHandler)
            try:
                return udp, TCPServer((self.address, udp.server_address[1]), DNSHandler)
            except OSError as exc:
                udp.server_close()
                if exc.errno != errno.EADDRINUSE or self.port != 0:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free port on {self.address} for both UDP and TCP")

    def start(self) -> None:
        udp, tcp = self._netns.call(self._bind) if self._netns is not None else self._bind()
        self.port = udp.server_address[1]
        for server in (udp, tcp):
            server.resolver = self._resolver
            server.logger = DNSLogger(log="error", prefix=False, logf=log.debug)  # unanswered queries
            self._servers.append(server)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop answering and close both sockets (queries then meet a closed port)."""
        self._resolver.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def resolv_conf(netns: Netns, *nameservers: str) -> Iterator[Path]:
    """``/etc/netns/NS/resolv.conf`` naming ``nameservers``: every process started with
    ``ip netns exec NS`` reads it as its /etc/resolv.conf. Removed afterwards (``/etc/netns``
    itself stays: another test may be writing into it)."""
    directory = Path("/etc/netns") / netns.name
    directory.mkdir(parents=True)
    try:
        path = directory / "resolv.conf"
        path.write_text("".join(f"nameserver {address}\n" for address in nameservers))
        yield path
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started server with no zones yet, on a loopback address of its own (no other test or
    host resolver shares its sockets); the test loads what it serves."""
    address = f"127.53.{os.getpid() % 250 + 1}.{time.monotonic_ns() % 250 + 1}"
    with DnsServer(address) as server:
        yield server
