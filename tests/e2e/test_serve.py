"""``netpolicy serve`` end to end: the daemon in one namespace, clients in another.

Each test starts the real console script inside the server namespace (``ip netns exec``), so the
kernel state it writes is that namespace's only, and asserts what a client on the other side of
the veth link sees: ECONNREFUSED at SYN, a 554 banner, a 220 banner.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.netns import NetPair
from tests.support.serve import NETPOLICY, Served
from tests.support.serve_policy import ACCEPTED, BLOCKED, LATER, PORT, REJECTED, policy_text
from tests.support.wait import wait_until


def nft(s: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return s.pair.server.exec(["nft", *args], check=False)


def test_each_behaviour_and_the_kernel_refusal_log_line(served: Served) -> None:
    assert served.outcome(BLOCKED) == "refused"
    assert served.outcome(REJECTED) == "554"
    assert served.outcome(ACCEPTED) == "220"
    wait_until(lambda: f"ICID 0 TCPREFUSE SG BLACKLIST match {BLOCKED}" in served.log_text(), "the kernel refusal's log line")
    wait_until(lambda: "REJECT SG REJECTLIST match 192.0.2.77" in served.log_text(), "the REJECT log line")


def test_flushed_ruleset_is_repaired_within_a_second(served: Served) -> None:
    assert nft(served, "flush", "ruleset").returncode == 0
    flushed = time.monotonic()
    wait_until(lambda: served.outcome(BLOCKED, timeout=0.5) == "refused", "the blocked host refused again", timeout=3)
    took = time.monotonic() - flushed
    assert took < 1.0, f"repair took {took:.2f} s"
    wait_until(lambda: "drift repaired" in served.stderr_text(), "the repair's log line")


def test_sighup_reload_reaches_the_kernel_and_broken_policy_changes_nothing(served: Served) -> None:
    assert served.outcome(LATER) == "220"
    served.write_policy(blacklist=f"{BLOCKED}, 198.51.100.0/24")
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: served.outcome(LATER) == "refused", "the reloaded blacklist to refuse 198.51.100.0/24")
    # A broken policy: logged with file:line, nothing changes (the file watcher sees it too).
    served.write_policy(blacklist="10.1.1.300")
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: f"{served.policy}:" in served.stderr_text() and "10.1.1.300" in served.stderr_text(),
               "the broken policy's file:line log line")
    assert served.outcome(LATER) == "refused" and served.outcome(BLOCKED) == "refused"
    assert served.outcome(ACCEPTED) == "220"


def test_kill_9_keeps_refusals_and_restart_converges_without_a_window(served: Served) -> None:
    served.proc.kill()
    served.proc.wait()
    assert served.outcome(BLOCKED) == "refused"  # the kernel still refuses with no daemon at all
    served.write_policy(blacklist=f"{BLOCKED}, 198.51.100.0/24")
    probe_results: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            probe_results.append(served.outcome(BLOCKED, timeout=0.5))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        served.start()
        wait_until(lambda: served.outcome(LATER) == "refused", "the restarted serve to refuse 198.51.100.0/24")
    finally:
        stop.set()
        prober.join()
    assert probe_results and set(probe_results) == {"refused"}, set(probe_results)


def test_repeat_offender_is_promoted_to_the_kernel_then_released(served: Served) -> None:
    for _ in range(3):
        assert served.outcome(REJECTED) == "554"
    wait_until(lambda: served.outcome(REJECTED, timeout=0.5) == "refused", "the repeat offender refused by the kernel", timeout=3)
    wait_until(lambda: "promoted 192.0.2.77" in served.stderr_text(), "the promotion's log line")
    status = json.loads(served.pair.server.exec([NETPOLICY, "status", "-p", str(served.policy), "--json"]).stdout)
    # Listed means held; seconds left are rounded, so a status slower than 2.5 s under load reads 0.
    assert [p["address"] for p in status["promoted"]] == [REJECTED] and 0 <= status["promoted"][0]["expires_in"] <= 3
    wait_until(lambda: served.outcome(REJECTED, timeout=0.5) == "554", "the promotion to end", timeout=8)


def test_status_shows_the_generation_serve_applied(served: Served) -> None:
    status = json.loads(served.pair.server.exec([NETPOLICY, "status", "-p", str(served.policy), "--json"]).stdout)
    gen = served.pair.server.exec([NETPOLICY, "compile", "-p", str(served.policy), "--json"]).stdout
    assert status["generation"] == json.loads(gen)["generation"]


def _smtp_ehlo(sock) -> bytes:  # type: ignore[no-untyped-def]
    sock.sendall(b"EHLO client.test\r\n")
    data = b""
    while b"250 " not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_listener_added_rebound_and_removed_without_dropping_others(served: Served) -> None:
    open_conn = served.pair.client.connect((served.pair.server_v4, PORT), source=ACCEPTED)
    assert open_conn.recv(512).startswith(b"220")
    base = policy_text(served.pair.server_v4, served.tmp / "maildir")
    second = base.replace("listeners:\n", f"""listeners:
  - name: Second
    address: {served.pair.server_v4}
    port: 2526
    hostname: mx2.example.test
    hat:
      - {{group: ALL, policy: REJECTED}}
    rat:
      - {{recipient: ALL, action: reject}}
    delivery: {{maildir: {served.tmp / "maildir2"}}}
""", 1)
    served.write_policy(text=second)
    served.proc.send_signal(signal.SIGHUP)

    def second_says(code: str, port: int) -> bool:
        try:
            with served.pair.client.connect((served.pair.server_v4, port), source=ACCEPTED, timeout=0.5) as s:
                return s.recv(512).startswith(code.encode())
        except OSError:
            return False

    wait_until(lambda: second_says("554", 2526), "listener Second on port 2526")
    # Rebind Second to another port: the old port closes, the new one serves.
    served.write_policy(text=second.replace("port: 2526", "port: 2527"))
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: second_says("554", 2527), "listener Second on port 2527")
    assert served.outcome(ACCEPTED) == "220"
    with pytest.raises(ConnectionRefusedError):
        served.pair.client.connect((served.pair.server_v4, 2526), source=ACCEPTED, timeout=0.5)
    # Remove it again.
    served.write_policy()
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: not second_says("554", 2527), "listener Second to be gone")
    # The connection opened before all this still talks to IncomingMail.
    assert b"250 " in _smtp_ehlo(open_conn)
    open_conn.close()


def test_metrics_endpoint(netpair: NetPair, tmp_path: Path) -> None:
    netpair.add_client_address(BLOCKED)
    netpair.add_client_address(REJECTED)
    s = Served(netpair, tmp_path)
    s.write_policy()
    try:
        s.launch([NETPOLICY, "serve", "-p", str(s.policy), "--metrics", "127.0.0.1:9108", "--interval", "0.2"])
        assert s.outcome(REJECTED) == "554"
        assert s.outcome(BLOCKED) == "refused"
        fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9108/metrics').read().decode())"

        def scrape() -> str:
            return netpair.server.exec([sys.executable, "-c", fetch]).stdout

        wait_until(lambda: 'netpolicy_kernel_refusals_total{listener="IncomingMail"} 1.0' in scrape(), "the kernel refusal counted",
                   step=0.3)
        text = scrape()
        assert 'netpolicy_connections_total{behavior="reject",listener="IncomingMail",sender_group="REJECTLIST"} 1.0' in text
        assert "netpolicy_apply_seconds_count 1.0" in text and "netpolicy_policy_info{generation=" in text
    finally:
        s.stop()


def test_runs_unprivileged_with_only_the_units_two_capabilities(netpair: NetPair, tmp_path: Path) -> None:
    """What packaging/netpolicy.service grants: uid nobody, CAP_NET_ADMIN + CAP_NET_BIND_SERVICE."""
    netpair.add_client_address(BLOCKED)
    work = Path(tempfile.mkdtemp(prefix="npunpriv"))
    work.chmod(0o777)
    s = Served(netpair, work)
    s.write_policy()
    s.policy.chmod(0o644)
    caps = "+net_admin,+net_bind_service"
    try:
        s.launch(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps=-all,{caps}",
                  f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}",
                  NETPOLICY, "serve", "-p", str(s.policy), "--mail-log", str(s.mail_log)], cwd=work)
        assert s.outcome(netpair.client_v4) == "220"
        assert s.outcome(BLOCKED) == "refused"
        assert "no CAP_NET_ADMIN" not in s.stderr_text()
        wait_until(lambda: "New SMTP ICID" in s.log_text(), "the connection's log line")
    finally:
        s.stop()


def test_broken_policy_at_start_exits_1_before_touching_the_kernel(netpair: NetPair, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(policy_text(netpair.server_v4, tmp_path, blacklist="10.1.1.300"))
    proc = netpair.server.exec([NETPOLICY, "serve", "-p", str(policy)], check=False)
    assert proc.returncode == 1
    assert f"{policy}:" in proc.stderr and "'10.1.1.300' is not an IPv4 address" in proc.stderr
    assert netpair.server.exec(["nft", "list", "ruleset"]).stdout.strip() == ""
