"""DnsResolver against a real DNS server: Debian's dnsmasq serving a test DNS list on loopback.

The list ``bl.example.test`` answers 127.0.0.2, 127.0.0.10 and 127.255.255.254 (the Spamhaus
"query through a public resolver" error code) for three test addresses. The resolver must read
the answers: list the first, list the second only under a pattern that names it, never list the
third (logging it once and counting it), and take a stopped server for "not listed".

The other resolver tests (test_resolver_dns.py) run against the tests' own dnslib server, which
can fail, drop and delay names on demand; these stay on a packaged server so the resolver is also
proven against answers it did not write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest
from prometheus_client import generate_latest

from netpolicy.daemon.metrics import DaemonView, Metrics
from netpolicy.model.entries import LISTING, parse_answer_pattern
from netpolicy.smtp.resolver import DnsResolver
from tests.support.wait import wait_until

DNSMASQ = "/usr/sbin/dnsmasq"
ZONE = "bl.example.test"
ANSWERS = {"192.0.2.1": "127.0.0.2", "192.0.2.2": "127.0.0.10", "192.0.2.3": "127.255.255.254"}
RESOLVER_LOG = "netpolicy.smtp.resolver"


@dataclass
class DnsServer:
    address: str
    port: int
    process: subprocess.Popen[bytes]

    def resolver(self, timeout: float = 1.0) -> DnsResolver:
        stub = dns.asyncresolver.Resolver(configure=False)
        stub.nameservers = [self.address]
        stub.port = self.port
        return DnsResolver(timeout=timeout, resolver=stub)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(address: str, port: int) -> bool:
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers, stub.port, stub.lifetime = [address], port, 0.5
    return bool(stub.resolve(f"1.2.0.192.{ZONE}.", "A"))


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (make sysdeps: dnsmasq-base)")
    # an address of its own on loopback, so no other test or host resolver shares the socket
    address = f"127.53.{os.getpid() % 250 + 1}.{time.monotonic_ns() % 250 + 1}"
    port = _free_port(address)
    records = [f"--host-record={'.'.join(reversed(a.split('.')))}.{ZONE},{answer}" for a, answer in ANSWERS.items()]
    process = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
         "--pid-file=", "--user=root", "--bind-interfaces", f"--listen-address={address}", f"--port={port}",
         f"--local=/{ZONE}/", "--local-ttl=300", "--log-facility=-", *records],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server = DnsServer(address, port, process)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {process.stderr.read().decode() if process.stderr else ''}")
            return _answers(address, port)

        wait_until(ready, f"dnsmasq answering on {address}:{port}", timeout=10, ignoring=(dns.exception.DNSException,))
        yield server
    finally:
        server.stop()
        if process.stderr:
            process.stderr.close()


def test_answers_are_judged_by_the_pattern(dns_server: DnsServer) -> None:
    resolver = dns_server.resolver()
    first = parse_answer_pattern("127.0.0.[2..9]")
    second = parse_answer_pattern("127.0.0.[10;11]")

    async def run() -> list[bool]:
        return [
            (await resolver.dnslisted("192.0.2.1", ZONE, LISTING)).value,
            (await resolver.dnslisted("192.0.2.1", ZONE, first)).value,
            (await resolver.dnslisted("192.0.2.1", ZONE, second)).value,
            (await resolver.dnslisted("192.0.2.2", ZONE, LISTING)).value,
            (await resolver.dnslisted("192.0.2.2", ZONE, first)).value,
            (await resolver.dnslisted("192.0.2.2", ZONE, second)).value,
            (await resolver.dnslisted("192.0.2.9", ZONE, LISTING)).value,  # not in the list: NXDOMAIN
        ]

    assert asyncio.run(run()) == [True, True, False, True, False, True, False]


def test_error_answer_is_never_a_listing_and_is_logged_once_and_counted(
        dns_server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    resolver = dns_server.resolver()
    anything_127 = parse_answer_pattern("127.[0..254].[0..255].[0..255]")
    caplog.set_level(logging.WARNING, logger=RESOLVER_LOG)

    async def run() -> list[bool]:
        return [(await resolver.dnslisted("192.0.2.3", ZONE, pattern)).value for pattern in (LISTING, anything_127, LISTING)]

    assert asyncio.run(run()) == [False, False, False]
    lines = [r.getMessage() for r in caplog.records if r.name == RESOLVER_LOG]
    assert lines == [f"DNS list {ZONE} answered 127.255.255.254: not a listing"]
    assert resolver.unexpected_answers == {(ZONE, "127.255.255.254"): 3}
    text = generate_latest(Metrics(DaemonView(dnslist_unexpected=resolver.unexpected_answers)).registry).decode()
    assert f'netpolicy_dnslist_unexpected_answers_total{{answer="127.255.255.254",zone="{ZONE}"}} 3.0' in text


def test_answers_are_fetched_once_per_address_and_zone(dns_server: DnsServer) -> None:
    resolver = dns_server.resolver()

    async def run() -> list[bool]:
        listed = [(await resolver.dnslisted("192.0.2.2", ZONE, LISTING)).value]
        dns_server.stop()  # the cached answer (TTL 300) must serve every other pattern
        listed.append((await resolver.dnslisted("192.0.2.2", ZONE, parse_answer_pattern("127.0.0.10"))).value)
        listed.append((await resolver.dnslisted("192.0.2.2", ZONE, parse_answer_pattern("127.0.0.2"))).value)
        return listed

    assert asyncio.run(run()) == [True, True, False]


def test_stopped_server_means_not_listed_within_the_timeout(dns_server: DnsServer) -> None:
    resolver = dns_server.resolver(timeout=1.0)
    dns_server.stop()
    started = time.monotonic()
    assert asyncio.run(resolver.dnslisted("192.0.2.1", ZONE, LISTING)).value is False
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert resolver.unexpected_answers == {}
