"""``netpolicy diff/apply/status/flush`` against a real kernel, run inside a test namespace."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import (
    BACKENDS,
    BLOCKED_HOST,
    PORT,
    backend_in,
    listening,
    outcome,
)
from tests.support.netns import Netns, NetPair

pytestmark = pytest.mark.netns

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yml"


@pytest.fixture
def policy_dir() -> Iterator[Path]:
    """World-readable, so the policy can also be read by an unprivileged user (setpriv)."""
    path = Path(tempfile.mkdtemp(prefix="npkernel"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def write_policy(directory: Path, address: str) -> str:
    """The example policy (SPEC.md section 2) with its listener on ``address``."""
    text = EXAMPLE.read_text().replace("address: 127.0.0.1 ", f"address: {address} ", 1)
    assert f"address: {address}" in text
    path = directory / "policy.yml"
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def netpolicy(ns: Netns, *args: str) -> tuple[int, str, str]:
    proc = ns.exec([sys.executable, "-m", "netpolicy", *args], check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_diff_apply_status_flush(netpair: NetPair, policy_dir: Path, backend_name: str) -> None:
    ns = netpair.server
    backend_in(ns, backend_name)  # skips when the backend cannot work here
    policy = write_policy(policy_dir, netpair.server_v4)
    common = ("-p", policy, "--backend", backend_name)

    code, out, _ = netpolicy(ns, "diff", *common)
    assert code == 2 and "+ 192.0.2.0/24 -> IncomingMail refuse4" in out.splitlines(), out
    assert netpolicy(ns, "apply", "--check", *common)[0] == 2
    code, out, _ = netpolicy(ns, "apply", *common)
    assert code == 0 and "applied: generation" in out and "+ 192.0.2.0/24 -> IncomingMail refuse4" in out, out
    code, out, _ = netpolicy(ns, "diff", "--json", *common)
    assert code == 0 and json.loads(out)["in_sync"] is True

    blocked = netpair.add_client_address(BLOCKED_HOST)
    with listening(netpair, netpair.server_v4):
        assert outcome(netpair.client, (netpair.server_v4, PORT), blocked) == "refused"
    if backend_name == "nftables":  # iptables drift is covered through the library (test_kernel_drift)
        check_flushed_ruleset_is_reported_and_repaired(netpair, common)

    code, out, _ = netpolicy(ns, "status", "--json", *common)
    status = json.loads(out)
    assert code == 0 and status["backend"] == backend_name and status["generation"]
    (listener,) = status["listeners"]
    assert listener["name"] == "IncomingMail" and listener["installed"] and listener["refused"] >= 1
    # 127.0.0.66, 192.0.2.0/24 and 198.51.100.10-20: nftables holds the range as one element,
    # ipset's hash:net as its 4 CIDRs
    assert listener["sets"]["refuse4"] == (3 if backend_name == "nftables" else 6)
    code, out, _ = netpolicy(ns, "status", *common)
    assert code == 0 and f"IncomingMail {netpair.server_v4}:{PORT} installed" in out, out

    code, out, _ = netpolicy(ns, "flush", "--backend", backend_name)
    assert code == 0 and "flushed" in out
    assert netpolicy(ns, "diff", *common)[0] == 2


def check_flushed_ruleset_is_reported_and_repaired(netpair: NetPair, common: tuple[str, ...]) -> None:
    ns, dest = netpair.server, (netpair.server_v4, PORT)
    with listening(netpair, netpair.server_v4):
        ns.exec(["nft", "flush", "ruleset"])  # drift: someone else flushed everything
        assert outcome(netpair.client, dest, BLOCKED_HOST) == "connected"
        code, out, _ = netpolicy(ns, "apply", "--check", *common)
        assert code == 2 and out.startswith("! missing table: inet netpolicy"), out
        assert netpolicy(ns, "apply", *common)[0] == 0
        code, out, _ = netpolicy(ns, "diff", *common)
        assert code == 0 and out.startswith("in sync"), out
        assert outcome(netpair.client, dest, BLOCKED_HOST) == "refused"


def test_without_cap_net_admin_every_kernel_command_names_the_capability(netpair: NetPair, policy_dir: Path) -> None:
    policy = write_policy(policy_dir, netpair.server_v4)
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    for command in (["apply", "-p", policy], ["flush"]):
        proc = netpair.server.exec([*unprivileged, sys.executable, "-m", "netpolicy", *command], check=False)
        assert proc.returncode == 77, (command, proc.stdout, proc.stderr)
        assert "CAP_NET_ADMIN" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "netpolicy" not in netpair.server.exec(["nft", "list", "tables"]).stdout
    assert os.path.exists(policy)


def test_apply_prints_the_first_changes_and_a_count_unless_verbose(netpair: NetPair, policy_dir: Path) -> None:
    ns = netpair.server
    backend_in(ns, "nftables")
    path = write_policy(policy_dir, netpair.server_v4)
    hosts = ", ".join(f"10.77.{i}.1" for i in range(80))  # 80 separate intervals
    text = Path(path).read_text()
    Path(path).write_text(text.replace("BLACKLIST: [", f"BLACKLIST: [{hosts}, ", 1))
    common = ("-p", path, "--backend", "nftables")

    code, out, _ = netpolicy(ns, "apply", *common)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 50 + 2 and lines[-1].startswith("applied: generation"), out
    assert lines[-2].startswith("... ") and "element changes in all" in lines[-2] and lines[-3].startswith("+ "), out
    netpolicy(ns, "flush")
    code, out, _ = netpolicy(ns, "apply", "--verbose", *common)
    assert code == 0 and sum(line.startswith("+ ") for line in out.splitlines()) > 80, out
    code, out, _ = netpolicy(ns, "diff", *common)
    assert code == 0 and out.startswith("in sync"), out
