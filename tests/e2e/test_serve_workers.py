"""``netpolicy serve --workers 2`` for real: a gateway namespace with nftables, a real redis-server
on the bridge (SPEC.md section 10, issue 15 item 3).

Which worker served a connection shows in the mail log: worker k hands out ids k+1, k+1+2, ...
(``first_id``/``id_step``), so an ICID's parity names its worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.support.dns_server import DnsServer, Record, Zone, dnslist_name, resolv_conf
from tests.support.fleet import Fleet, fleet, syn_probe
from tests.support.redis import RedisServer, running_redis
from tests.support.serve import NETPOLICY, Served
from tests.support.serve_policy import BLOCKED, PORT, REJECTED, policy_text
from tests.support.wait import wait_until

pytestmark = pytest.mark.netns

PROMOTE_AFTER = 4
METRICS = 9125


@dataclass
class Setup:
    net: Fleet
    store: RedisServer | None
    tmp: Path
    offender: str
    served: Served

    def policy(self, hostname: str = "mx.example.test", state: bool = True) -> str:
        text = policy_text(self.net.gateway_v4(0), self.tmp / "maildir").replace(
            f"REJECTLIST: [{REJECTED}]", f"REJECTLIST: [{self.offender}]").replace(
            "promote_after: 3, promote_for: 3", f"promote_after: {PROMOTE_AFTER}, promote_for: 60").replace(
            "ACCEPTED: {behavior: accept}", "ACCEPTED: {behavior: accept, max_concurrency: 2}").replace(
            "hostname: mx.example.test", f"hostname: {hostname}").replace(
            "      - {group: ALL, policy: ACCEPTED}", "      - {group: LIMITLIST, policy: LIMITED}\n      - {group: ALL, policy: ACCEPTED}").replace(
            "sender_groups:\n", f"sender_groups:\n  LIMITLIST: [{self.limited}]\n").replace(
            "mail_flow_policies:\n", "mail_flow_policies:\n  LIMITED: {behavior: accept, max_rcpts_per_hour: 10}\n")
        if state and self.store is not None:
            text += f"state: {{redis: '{self.store.url}', prefix: 'workers:'}}\n"
        return text

    @property
    def limited(self) -> str:
        """The client address allowed 10 recipients an hour."""
        return f"{self.net.prefix}60"

    @property
    def runtime(self) -> Path:
        return self.tmp / "serve.json"

    def args(self, interval: str = "0.2") -> list[str]:
        s = self.served
        return [NETPOLICY, "serve", "-p", str(s.policy), "--mail-log", str(s.mail_log), "--interval", interval,
                "--workers", "2", "--runtime-file", str(self.runtime), "--metrics", f"127.0.0.1:{METRICS}"]

    def metric(self, name: str) -> float | None:
        """One sample of the supervisor's /metrics (``name`` with its labels), None if absent."""
        url = f"http://127.0.0.1:{METRICS}/metrics"
        text = self.net.gateways[0].call(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return None if found is None else float(found.group(1))

    def status(self) -> dict[str, Any]:
        found = self.served.pair.server.exec([NETPOLICY, "status", "--json", "-p", str(self.served.policy),
                                              "--runtime-file", str(self.runtime)])
        data: dict[str, Any] = json.loads(found.stdout)
        return data

    def generations(self) -> set[str]:
        """Read from serve's runtime file (status itself needs a policy file that loads)."""
        return {w["generation"] for w in json.loads(self.runtime.read_text())["workers"]}

    def banner(self, source: str | None = None) -> str:
        """The first line a client gets."""
        with self.net.network.connect((self.net.gateway_v4(0), PORT), source=source) as sock:
            return sock.makefile("rb").readline().decode()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with fleet(1) as net, running_redis(net.network_v4, ns=net.network) as store:
        made = Setup(net, store, tmp_path, net.add_client_address(77), Served(net.gateway(0), tmp_path))
        made.served.write_policy(text=made.policy())
        try:
            made.served.launch(made.args())
            yield made
        finally:
            made.served.stop()
        assert "Traceback" not in made.served.stderr_text()


def _command(sock: socket.socket, lines: BinaryIO, command: str) -> bytes:
    """Send ``command``; its reply's last line."""
    sock.sendall(command.encode() + b"\r\n")
    while (reply := lines.readline())[3:4] == b"-":
        pass
    return reply


def _message(sock: socket.socket, tag: str) -> None:
    lines = sock.makefile("rb")
    assert lines.readline().startswith(b"220")
    for command in ("EHLO client.test", "MAIL FROM:<a@sender.test>", f"RCPT TO:<{tag}@example.test>", "DATA"):
        reply = _command(sock, lines, command)
        assert reply[:1] in (b"2", b"3"), (command, reply)
    sock.sendall(f"Subject: {tag}\r\n\r\nhello\r\n.\r\nQUIT\r\n".encode())
    assert lines.readline().startswith(b"250")


def _icids(log: str, address: str) -> list[int]:
    return [int(n) for n in re.findall(rf"New SMTP ICID (\d+) .* address {re.escape(address)} ", log)]


def test_both_workers_serve_and_ids_never_collide(setup: Setup) -> None:
    net = setup.net
    for i in range(40):
        with net.network.connect((net.gateway_v4(0), PORT)) as sock:
            _message(sock, f"m{i}")
    wait_until(lambda: sum(w["connections"] for w in setup.status()["workers"]) == 40, "the workers to report 40 connections")
    workers = setup.status()["workers"]
    assert len({w["pid"] for w in workers}) == 2
    assert all(w["connections"] > 0 for w in workers), workers
    log = setup.served.log_text()
    mids = [int(n) for n in re.findall(r"Start MID (\d+)", log)]
    assert len(mids) == 40
    assert {mid % 2 for mid in mids} == {0, 1}  # both lanes: both workers
    ids = [int(n) for n in re.findall(r"New SMTP ICID (\d+)", log)] + mids
    assert len(set(ids)) == len(ids) == 80  # ICIDs and MIDs come from one counter per worker
    wait_until(lambda: setup.metric('netpolicy_messages_total{listener="IncomingMail",outcome="accepted"}') == 40,
               "the supervisor's metrics to sum both workers' messages")
    text = setup.served.pair.server.exec([NETPOLICY, "status", "-p", str(setup.served.policy),
                                          "--runtime-file", str(setup.runtime)]).stdout
    for w in workers:
        assert f"worker {w['slot']}: pid {w['pid']}, generation {w['generation']}" in text
    fleet = json.loads(setup.served.pair.server.exec([NETPOLICY, "status", "--fleet", "--json", "-p",
                                                      str(setup.served.policy)]).stdout)
    [gateway] = fleet["gateways"]
    assert sorted(w["pid"] for w in gateway["workers"]) == sorted(w["pid"] for w in workers)


def test_max_concurrency_holds_across_the_workers(setup: Setup) -> None:
    net = setup.net
    source = net.add_client_address(50)
    socks = [net.network.connect((net.gateway_v4(0), PORT), source=source) for _ in range(8)]
    try:
        codes = [sock.makefile("rb").readline()[:3] for sock in socks]
        assert codes.count(b"220") == 2, codes  # per process it would be 2 on each worker
        assert set(codes) == {b"220", b"421"}, codes
        lanes = {n % 2 for n in _icids(setup.served.log_text(), source)}
        assert lanes == {0, 1}, "all 8 connections landed on one worker"
    finally:
        for sock in socks:
            sock.close()


def test_max_rcpts_per_hour_holds_across_the_workers(setup: Setup) -> None:
    net = setup.net
    source = net.add_client_address(60)
    codes: list[int] = []
    for n in range(6):
        with net.network.connect((net.gateway_v4(0), PORT), source=source) as sock:
            lines = sock.makefile("rb")
            assert lines.readline().startswith(b"220")
            for command in ("EHLO client.test", "MAIL FROM:<a@sender.test>"):
                assert _command(sock, lines, command).startswith(b"250")
            codes += [int(_command(sock, lines, f"RCPT TO:<h{n}.{i}@example.test>")[:3]) for i in range(5)]
            sock.sendall(b"QUIT\r\n")
    assert codes.count(250) == 10 and set(codes) == {250, 452}, codes
    if {n % 2 for n in _icids(setup.served.log_text(), source)} != {0, 1}:
        pytest.skip("every session landed on one worker this time")  # 2 in 2**6 runs


def test_reload_reaches_every_worker_and_a_broken_policy_changes_nothing(setup: Setup) -> None:
    served = setup.served
    before = setup.status()["workers"][0]["generation"]
    served.write_policy(text=setup.policy(hostname="mx2.example.test"))
    wait_until(lambda: len(g := setup.generations()) == 1 and before not in g, "both workers on the new generation",
               timeout=10)
    after = setup.generations()
    banners = [setup.banner() for _ in range(20)]
    assert all("mx2.example.test" in b for b in banners), banners
    lanes = {n % 2 for n in _icids(served.log_text(), setup.net.network_v4)[-20:]}
    assert lanes == {0, 1}

    served.write_policy(text="version: 1\nlisteners: [\n")
    wait_until(lambda: "refused, policy unchanged" in served.stderr_text(), "the broken policy to be refused")
    time.sleep(1.5)
    assert setup.generations() == after
    assert all("mx2.example.test" in setup.banner() for _ in range(10))

    served.write_policy(text=setup.policy(hostname="mx4.example.test", state=False))
    wait_until(lambda: "policy unchanged: serve --workers 2 needs a state block" in served.stderr_text(),
               "the policy without a state block to be refused")
    time.sleep(1.5)
    assert setup.generations() == after
    assert all("mx2.example.test" in setup.banner() for _ in range(10))


def test_sigterm_stops_every_worker(setup: Setup) -> None:
    served = setup.served
    pids = [w["pid"] for w in setup.status()["workers"]]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=20) == 0
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert not setup.runtime.exists()


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(setup: Setup) -> None:
    for i in range(10):
        with setup.net.network.connect((setup.net.gateway_v4(0), PORT)) as sock:
            _message(sock, f"k{i}")
    wait_until(lambda: setup.status()["workers"][0]["connections"] > 0, "worker 0 to report its connections")
    first = setup.status()["workers"]
    victim = first[0]
    os.kill(victim["pid"], signal.SIGKILL)
    # Connections queued on its socket at that moment die with it. Once every thread of it has
    # exited (when the supervisor can reap it; its main thread is a zombie earlier, with the
    # socket still open), the kernel sends every SYN to the other worker.
    wait_until(lambda: not os.path.exists(f"/proc/{victim['pid']}"), "the killed worker to be reaped")
    answered = [setup.banner()[:3] for _ in range(20)]
    assert answered == ["220"] * 20, answered
    wait_until(lambda: (w := setup.status()["workers"][0])["running"] and w["pid"] != victim["pid"], "worker 0 restarted",
               timeout=10)
    now = setup.status()["workers"]
    assert now[0]["restarts"] == 1 and now[1]["pid"] == first[1]["pid"]
    assert "worker 0 (pid %d) ended with status -9" % victim["pid"] in setup.served.stderr_text()
    assert setup.metric("netpolicy_worker_restarts_total") == 1
    # what the killed worker counted stays in the sums
    assert setup.metric('netpolicy_messages_total{listener="IncomingMail",outcome="accepted"}') == 10
    for i in range(20):
        with setup.net.network.connect((setup.net.gateway_v4(0), PORT)) as sock:
            _message(sock, f"r{i}")
    log = setup.served.log_text()
    ids = [int(n) for n in re.findall(r"(?:New SMTP ICID|Start MID) (\d+)", log)]
    assert len(ids) == len(set(ids))  # the restarted worker does not hand out its predecessor's ids


def test_a_worker_started_on_a_newer_file_brings_everyone_to_it(setup: Setup) -> None:
    """The file changes while a worker restarts, unseen by the supervisor (its watcher looks once a
    minute here): the new worker loads the new file, and the supervisor reloads to match it."""
    served = setup.served
    served.stop()
    served.launch(setup.args(interval="60"))
    [before] = setup.generations()
    served.write_policy(text=setup.policy(hostname="mx3.example.test"))
    victim = setup.status()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(g := setup.generations()) == 1 and before not in g, "both workers on the file's generation",
               timeout=15)
    [after] = setup.generations()
    assert f"worker 0 (pid {setup.status()['workers'][0]['pid']}) runs policy generation {after}, the kernel {before}" \
        in served.stderr_text()
    assert f"reload (workers on another policy generation): now at policy generation {after}" in served.stderr_text()
    assert all("mx3.example.test" in setup.banner() for _ in range(10))


def test_sigusr1_reopens_the_mail_log_in_every_worker(setup: Setup) -> None:
    served = setup.served
    rotated = served.mail_log.with_suffix(".1")
    os.rename(served.mail_log, rotated)
    served.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: served.mail_log.exists(), "the supervisor to reopen the mail log")
    time.sleep(0.5)  # the workers get it over their control channels
    for i in range(20):
        with setup.net.network.connect((setup.net.gateway_v4(0), PORT)) as sock:
            _message(sock, f"u{i}")
    lanes = {int(n) % 2 for n in re.findall(r"Start MID (\d+)", served.log_text())}
    assert lanes == {0, 1}
    assert "Start MID" not in rotated.read_text()


def test_offences_spread_over_the_workers_promote_the_host(setup: Setup) -> None:
    def probe() -> str:
        return syn_probe(setup.net.network, setup.offender, setup.net.gateway_v4(0), PORT, timeout=0.2)

    assert probe() == "open"
    for _ in range(PROMOTE_AFTER):
        assert setup.banner(setup.offender)[:3] == "554"
    wait_until(lambda: probe() == "refused", "the host refused at SYN", timeout=2)
    icids = _icids(setup.served.log_text(), setup.offender)
    assert len(icids) == PROMOTE_AFTER
    if {n % 2 for n in icids} != {0, 1}:
        pytest.skip("every offence landed on one worker this time")  # 2 in 2**PROMOTE_AFTER runs
    status = setup.status()
    assert [(p["address"], p["listener"]) for p in status["promoted"]] == [(setup.offender, "IncomingMail")]


def test_more_than_one_worker_needs_state(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with fleet(1) as net:
        made = Setup(net, None, tmp_path, net.add_client_address(77), Served(net.gateway(0), tmp_path))
        made.served.write_policy(text=made.policy(state=False))
        done = net.gateways[0].exec(made.args(), check=False)
        assert done.returncode == 1
        assert "serve --workers 2 needs a state block" in done.stderr
        assert "netpolicy" not in net.gateways[0].exec(["nft", "list", "ruleset"]).stdout
        assert not made.runtime.exists()


def test_a_refusal_learned_in_a_worker_reaches_the_kernel(tmp_path: Path) -> None:
    """The worker that refuses a DNS-listed host publishes it; the supervisor learns it into the kernel."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with fleet(1) as net, running_redis(net.network_v4, ns=net.network) as store:
        listed, gateway = net.add_client_address(30), net.gateways[0]
        dns = DnsServer("127.0.0.1", 53, netns=gateway)
        dns.load(Zone("bl.test", [Record(dnslist_name(listed, "bl.test"), "A", "127.0.0.2", ttl=300)]))
        with dns, resolv_conf(gateway, "127.0.0.1"):
            made = Setup(net, store, tmp_path, net.add_client_address(77), Served(net.gateway(0), tmp_path))
            made.served.write_policy(text=made.policy().replace(f"BLACKLIST: [{BLOCKED}]", 'BLACKLIST: ["dnslist[bl.test]"]'))
            try:
                made.served.launch([*made.args(), "--verbose-connections"])
                assert made.served.outcome(listed) == "reset"  # userland: the handshake, then RST
                wait_until(lambda: syn_probe(net.network, listed, net.gateway_v4(0), PORT, timeout=0.2) == "refused",
                           "the refusal learned into the kernel", timeout=3)
                learned = made.status()["learned"]
                assert [(h["address"], h["listener"]) for h in learned] == [(listed, "IncomingMail")]
                assert 290 <= learned[0]["expires_in"] <= 300
                assert made.served.outcome(net.network_v4) == "220"
                # the supervisor logs the kernel's refusal with the worker's reason, not the address's
                wait_until(lambda: "ICID 0 TCPREFUSE SG BLACKLIST match dnslist[bl.test]" in made.served.log_text(),
                           "the kernel refusal's line")
            finally:
                made.served.stop()
