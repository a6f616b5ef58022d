"""Kernel refusals on a real kernel, in namespaces: refused hosts get ECONNREFUSED (RST-ACK
answering the SYN), everyone else connects; IPv4 and IPv6; both backends; promotions."""

from __future__ import annotations

import time

import pytest

from netpolicy.kernel.base import Backend
from netpolicy.kernel.values import KernelError
from tests.support.capture import Capture
from tests.support.kernel import (
    BACKENDS,
    BLOCKED_HOST,
    BLOCKED_HOST6,
    BLOCKED_NET_HOST,
    LISTENER,
    PORT,
    backend_in,
    listening,
    make_plan,
    outcome,
)
from tests.support.netns import NetPair
from tests.support.wait import wait_until

pytestmark = pytest.mark.netns


def test_refused_host_gets_rst_ack_for_its_syn_on_the_wire(netpair: NetPair) -> None:
    backend = backend_in(netpair.server, "nftables")
    src = netpair.add_client_address(BLOCKED_HOST)
    netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    with listening(netpair, netpair.server_v4), Capture(netpair.server, netpair.server_if, f"tcp port {PORT}") as cap:
        sock = netpair.client.socket()
        sock.bind((src, 0))
        sport = sock.getsockname()[1]
        sock.settimeout(2)
        with pytest.raises(ConnectionRefusedError):
            sock.connect((netpair.server_v4, PORT))
        sock.close()
        cap.until(lambda segments: any(s.flags == "RA" for s in segments), "the server's RST-ACK")
    conversation = [(s.src, s.flags) for s in cap.conversation(sport)]
    assert conversation == [(src, "S"), (netpair.server_v4, "RA")]
    status = netpair.server.call(lambda: backend.status(make_plan(netpair.server_v4)))
    (listener,) = status.listeners
    assert listener.name == LISTENER and listener.refused == 1


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_ipv4_refused_hosts_and_networks_others_connect(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    blocked = netpair.add_client_address(BLOCKED_HOST)
    in_net = netpair.add_client_address(BLOCKED_NET_HOST)
    fine = netpair.add_client_address("192.0.2.67")
    other_addr = netpair.add_server_address("10.250.0.1")  # a second server address, not the listener's
    netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    dest = (netpair.server_v4, PORT)
    with listening(netpair, "0.0.0.0"):
        assert outcome(netpair.client, dest, blocked) == "refused"
        assert outcome(netpair.client, dest, in_net) == "refused"
        assert outcome(netpair.client, dest, fine) == "connected"
        assert outcome(netpair.client, dest, netpair.client_v4) == "connected"
        # the rule matches the listener's address only: the same port elsewhere is not ours
        assert outcome(netpair.client, (other_addr, PORT), blocked) == "connected"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_ipv6_and_dual_stack_listener(netpair: NetPair, backend_name: str) -> None:
    backend = backend_in(netpair.server, backend_name)
    blocked6 = netpair.add_client_address(BLOCKED_HOST6)
    fine6 = netpair.add_client_address("2001:db8:beef::7")
    blocked4 = netpair.add_client_address(BLOCKED_HOST)
    netpair.server.call(lambda: backend.apply(make_plan("::")))
    with listening(netpair, "::"):
        assert outcome(netpair.client, (netpair.server_v6, PORT), blocked6) == "refused"
        assert outcome(netpair.client, (netpair.server_v6, PORT), fine6) == "connected"
        assert outcome(netpair.client, (netpair.server_v4, PORT), blocked4) == "refused"
        assert outcome(netpair.client, (netpair.server_v4, PORT), netpair.client_v4) == "connected"
    assert netpair.server.call(lambda: backend.diff(make_plan("::"))).in_sync


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_promoted_host_is_refused_until_its_time_runs_out(netpair: NetPair, backend_name: str) -> None:
    backend: Backend = backend_in(netpair.server, backend_name)
    promoted = netpair.add_client_address("192.0.2.99")
    plan = make_plan(netpair.server_v4)
    netpair.server.call(lambda: backend.apply(plan))
    dest = (netpair.server_v4, PORT)
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, dest, promoted) == "connected"
        netpair.server.call(lambda: backend.promote(LISTENER, promoted, 2))
        promoted_at = time.monotonic()
        assert outcome(netpair.client, dest, promoted) == "refused"
        found = netpair.server.call(backend.promoted)
        assert [(p.listener, p.address) for p in found] == [(LISTENER, promoted)]
        assert 0 < found[0].expires_in <= 2
        # a re-apply of the plan (which does not contain it) keeps the promotion
        netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4, generation="g2")))
        assert outcome(netpair.client, dest, promoted) == "refused"
        wait_until(lambda: outcome(netpair.client, dest, promoted) == "connected", "the 2 s promotion to run out")
        assert time.monotonic() - promoted_at > 1.5, "the promotion ended before its time"
        assert netpair.server.call(backend.promoted) == []


def test_promoting_on_a_listener_without_kernel_sets_is_an_error(netpair: NetPair) -> None:
    backend = backend_in(netpair.server, "nftables")
    netpair.server.call(lambda: backend.apply(make_plan(netpair.server_v4)))
    with pytest.raises(KernelError, match="promoted6"):
        netpair.server.call(lambda: backend.promote(LISTENER, "2001:db8::5", 10))
