"""Two ``netpolicy serve`` gateways sharing one Redis store (SPEC.md section 10, issue 15 "Tests").

Each gateway runs in a namespace of its own (its own kernel ruleset) on a bridge; the client and
a real redis-server sit on the bridge's side. The policy admits 10 recipients an hour per client
address: 30 recipients spread over both gateways get exactly 10 accepted. With the store killed,
mail flows on each gateway's own counters (10 each, no reply caused by the store) and each logs
the outage once; started again (empty), the limit is shared again.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet, fleet
from tests.support.redis import RedisServer, running_redis
from tests.support.serve import Served
from tests.support.serve_policy import PORT, policy_text
from tests.support.wait import wait_until

UNREACHABLE = "state store unreachable: limits are per process until it returns"


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[Fleet, RedisServer, list[Served]]]:
    if not _root():
        pytest.skip("needs root for network namespaces")
    with fleet(2) as net, running_redis(net.network_v4, ns=net.network) as store:
        gateways: list[Served] = []
        try:
            for i in range(2):
                served = Served(net.gateway(i), tmp_path / f"gw{i}")
                served.tmp.mkdir()
                served.write_policy(text=_policy(net, i, served, store.url))
                served.start()
                gateways.append(served)
            yield net, store, gateways
        finally:
            for served in gateways:
                served.stop()


def _policy(net: Fleet, i: int, served: Served, url: str | None) -> str:
    text = policy_text(net.gateway_v4(i), served.tmp / "maildir").replace(
        "ACCEPTED: {behavior: accept}", "ACCEPTED: {behavior: accept, max_rcpts_per_hour: 10}")
    return text + (f"state: {{redis: '{url}', prefix: 'fleet:'}}\n" if url else "")


def _reload(served: Served, text: str) -> None:
    done = served.stderr_text().count("now at policy generation")
    served.write_policy(text=text)
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: served.stderr_text().count("now at policy generation") > done, "the reload")


def _root() -> bool:
    import os

    return os.geteuid() == 0


def _replies(sock: socket.socket) -> Iterator[int]:
    lines = sock.makefile("rb")
    while True:
        line = lines.readline()
        if not line:
            return
        if line[3:4] != b"-":
            yield int(line[:3])


def _recipients(net: Fleet, gateway: int, source: str, count: int, tag: str) -> list[int]:
    """One session from ``source`` to ``gateway``: the reply to each of ``count`` RCPTs."""
    with net.network.connect((net.gateway_v4(gateway), PORT), source=source) as sock:
        replies = _replies(sock)
        assert next(replies) == 220
        codes = []
        for line in ["EHLO client.test", "MAIL FROM:<a@sender.test>"]:
            sock.sendall(line.encode() + b"\r\n")
            assert next(replies) == 250, line
        for i in range(count):
            sock.sendall(f"RCPT TO:<{tag}{i}@example.test>\r\n".encode())
            codes.append(next(replies))
        sock.sendall(b"QUIT\r\n")
        return codes


def _spread(net: Fleet, source: str, tag: str) -> list[int]:
    """30 recipients from ``source``: six sessions of 5, alternating between the gateways."""
    return [code for n in range(6) for code in _recipients(net, n % 2, source, 5, f"{tag}{n}.")]


def test_thirty_recipients_over_two_gateways_get_ten(shared: tuple[Fleet, RedisServer, list[Served]]) -> None:
    net, _, _ = shared
    codes = _spread(net, net.network_v4, "a")
    assert codes.count(250) == 10, codes
    assert set(codes) - {250} == {452}, codes


def test_store_killed_and_restarted(shared: tuple[Fleet, RedisServer, list[Served]]) -> None:
    net, store, gateways = shared
    store.kill()
    during = _spread(net, net.add_client_address(100), "b")
    assert during.count(250) == 20, during  # per process: 10 on each gateway
    assert set(during) - {250} == {452}, during  # nothing refused because of the store
    for served in gateways:
        assert served.stderr_text().count(UNREACHABLE) == 1
    store.start()
    for served in gateways:
        wait_until(lambda s=served: "state store reachable again" in s.stderr_text(), "the gateway to use the store again",
                   timeout=10)
    after = _spread(net, net.add_client_address(101), "c")
    assert after.count(250) == 10, after
    assert "Traceback" not in "".join(s.stderr_text() for s in gateways)


def test_a_reload_moves_a_gateway_off_the_store_and_back(shared: tuple[Fleet, RedisServer, list[Served]]) -> None:
    net, store, gateways = shared
    first = gateways[0]
    _reload(first, _policy(net, 0, first, None))
    apart = _spread(net, net.add_client_address(102), "d")
    assert apart.count(250) == 20, apart  # gateway 0 counts alone now: 10 there, 10 on the store
    _reload(first, _policy(net, 0, first, store.url))
    wait_until(lambda: first.stderr_text().count("state store reachable: limits are shared") == 2, "gateway 0 on the store")
    shared_again = _spread(net, net.add_client_address(103), "e")
    assert shared_again.count(250) == 10, shared_again
