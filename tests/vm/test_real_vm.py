"""The Ansible role on a real Debian 12 VM (qemu), checked from senders on the VM's network.

`make vm-test` runs only this (and fails when the machine cannot); `make test` runs it too when
the machine can, and skips it with the reason otherwise. NETPOLICY_VM_TEST=skip skips it.
See tests/vm/vmlib.py for the network layout. Every playbook output is kept in var/vm-test/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.wait import wait_until
from tests.vm import vmlib
from tests.vm.vmlib import (
    ACCEPTED_SENDER,
    BLOCKED_SENDER,
    REJECTED_SENDER,
    VM_ADDRESS,
    PlaybookRun,
    Vm,
)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]

MODE = os.environ.get("NETPOLICY_VM_TEST", "auto")  # auto | require | skip
SMTP_PORT = 25


@dataclass
class Lab:
    vm: Vm
    inventory: Path
    fresh_check: PlaybookRun
    first: PlaybookRun
    second: PlaybookRun
    timings: dict[str, float]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if MODE == "skip":
        pytest.skip("NETPOLICY_VM_TEST=skip")
    reason = vmlib.why_not()
    if reason:
        if MODE == "require":
            pytest.fail(f"make vm-test cannot run here: {reason}")
        pytest.skip(f"real-VM test: {reason}")
    timings: dict[str, float] = {}
    work = tmp_path_factory.mktemp("vm")
    t = time.monotonic()
    image = vmlib.build_image()
    timings["image"] = time.monotonic() - t
    t = time.monotonic()
    wheels = work / "wheels"
    vmlib.build_wheels(wheels)
    timings["wheels"] = time.monotonic() - t
    vm = Vm.create(image, work)
    try:
        vm.boot(os.environ.get("NETPOLICY_VM_ACCEL", "auto"))
        timings["boot"] = vm.boot_seconds
        inventory = vm.write_inventory(wheels)
        fresh_check = vm.playbook(inventory, "--check", "--diff", name="run0-check-fresh")
        timings["run0-check-fresh"] = fresh_check.seconds
        first = vm.playbook(inventory, name="run1")
        timings["run1"] = first.seconds
        second = vm.playbook(inventory, name="run2")
        timings["run2"] = second.seconds
        yield Lab(vm, inventory, fresh_check, first, second, timings)
    finally:
        # Artifacts for whoever reads a failure or writes the issue note (var/vm-test/).
        with contextlib.suppress(Exception):
            (vmlib.ARTIFACTS / "console.log").write_text(vm.console.read_text(errors="replace"))
        with contextlib.suppress(Exception):
            journal = vm.sudo("journalctl -u netpolicy --no-pager -n 200", check=False).stdout
            (vmlib.ARTIFACTS / "netpolicy.journal").write_text(journal)
        summary = {"accel": vm.accel, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
        with contextlib.suppress(Exception):
            (vmlib.ARTIFACTS / "summary.json").write_text(json.dumps(summary, indent=2))
        vmlib.log(json.dumps(summary))
        vm.destroy()


def _connect(lab: Lab, source: str, timeout: float = 5.0):
    return lab.vm.ns.connect((VM_ADDRESS, SMTP_PORT), source=source, timeout=timeout)


def _policy_with(extra_blacklist: str) -> dict:
    data = yaml.safe_load((vmlib.ANSIBLE_DIR / "group_vars" / "mx.yml").read_text())
    data["netpolicy_policy"]["sender_groups"]["BLACKLIST"].append(extra_blacklist)
    return data


# ------------------------------------------------------------------------------------ playbooks
def test_check_mode_on_a_new_host_changes_nothing(lab: Lab) -> None:
    run = lab.fresh_check
    assert run.returncode == 0, run.output[-6000:]
    assert run.mx.failed == 0 and run.mx.changed > 0
    assert "netpolicy is not installed yet on mx1: no kernel diff before the first real run" in run.output
    assert re.search(r"^\+\s+- 10\.20\.0\.66$", run.output, re.M), "--diff shows the whole new policy"
    # The run that follows it (run1) found a new host: nothing was created by check mode.
    assert lab.first.mx.changed > 0 and "netpolicy : Create the netpolicy user" in lab.first.changed_tasks


def test_first_run_provisions_the_vm(lab: Lab) -> None:
    run = lab.first
    assert run.returncode == 0, run.output[-6000:]
    assert run.mx.failed == 0 and run.mx.unreachable == 0
    assert run.mx.changed > 0
    # The policy on the host is the one the inventory gave, and the venv's netpolicy accepts it.
    out = lab.vm.sudo("/opt/netpolicy/bin/netpolicy validate -p /etc/netpolicy/policy.yml").stdout
    assert ": ok (generation" in out
    assert lab.vm.sudo("stat -c '%U:%G %a' /etc/netpolicy/policy.yml").stdout.strip() == "root:netpolicy 640"
    assert lab.vm.ssh("systemctl is-enabled netpolicy").stdout.strip() == "enabled"
    assert lab.vm.ssh("id -u netpolicy", check=False).returncode == 0
    # Installed from the host's wheels with no index: the VM has no route to one.
    assert lab.vm.ssh("ip route show default").stdout.strip() == ""


def test_second_run_changes_nothing(lab: Lab) -> None:
    run = lab.second
    assert run.returncode == 0, run.output[-6000:]
    assert run.mx.failed == 0
    assert run.mx.changed == 0, [line for line in run.output.splitlines() if line.startswith("changed:")]


def test_serve_runs_as_the_unprivileged_user(lab: Lab) -> None:
    assert lab.vm.ssh("systemctl is-active netpolicy", check=False).stdout.strip() == "active"
    user = lab.vm.ssh("ps -o user= -p $(systemctl show -p MainPID --value netpolicy)").stdout.strip()
    assert user == "netpolicy"


def test_serve_runs_two_workers_on_the_store_the_role_installed(lab: Lab) -> None:
    assert lab.vm.ssh("systemctl is-active redis-server", check=False).stdout.strip() == "active"
    assert " --workers 2 " in lab.vm.ssh("systemctl show -p ExecStart --value netpolicy").stdout
    assert "redis: redis://127.0.0.1:6379/0" in lab.vm.sudo("cat /etc/netpolicy/policy.yml").stdout

    def announced() -> list[str]:
        return lab.vm.ssh("redis-cli --raw keys 'netpolicy:gateway:*'").stdout.split()

    wait_until(announced, "serve's heartbeat key in the store", timeout=30, step=1)
    assert {key.rsplit(":", 1)[0] for key in announced()} == {"netpolicy:gateway:mx"}


# ------------------------------------------------------------------------------------ behaviour
def test_tcprefuse_is_refused_at_syn_by_the_vm_kernel(lab: Lab) -> None:
    from tests.support.capture import Capture

    ruleset = lab.vm.sudo("nft list table inet netpolicy").stdout
    assert BLOCKED_SENDER in ruleset, ruleset
    with Capture(lab.vm.ns, "tap0", f"tcp port {SMTP_PORT} and host {BLOCKED_SENDER}") as cap:
        with pytest.raises(ConnectionRefusedError):
            _connect(lab, BLOCKED_SENDER)
        cap.until(lambda segments: any(s.flags == "RA" for s in segments), "the VM's RST-ACK")
    flags = [s.flags for s in cap.segments]
    assert flags[:2] == ["S", "RA"], [str(s) for s in cap.segments]
    assert "SA" not in flags
    assert cap.segments[0].src == BLOCKED_SENDER and cap.segments[1].src == VM_ADDRESS


def test_reject_gets_554_banner_then_close(lab: Lab) -> None:
    sock = _connect(lab, REJECTED_SENDER)
    try:
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    assert data.startswith(b"554 "), data
    assert f"{REJECTED_SENDER} is not welcome here".encode() in data


def test_accepted_mail_is_delivered_to_the_maildir(lab: Lab) -> None:
    marker = f"vm-test-{time.time_ns()}"
    client = lab.vm.ns.call(lambda: smtplib.SMTP(VM_ADDRESS, SMTP_PORT, source_address=(ACCEPTED_SENDER, 0), timeout=30))
    try:
        code, banner = client.ehlo("sender.example.test")
        assert code == 250, banner
        refused = client.sendmail(
            "alice@sender.example.test", ["bob@example.test"],
            f"From: alice@sender.example.test\r\nTo: bob@example.test\r\nSubject: {marker}\r\n\r\nhello\r\n",
        )
        assert refused == {}
    finally:
        client.quit()
    found = lab.vm.sudo(f"grep -rl {marker} /var/lib/netpolicy/maildir", check=False)
    assert found.returncode == 0 and found.stdout.strip(), "accepted message not in the Maildir"
    maillog = lab.vm.sudo("cat /var/log/netpolicy/mail.log").stdout
    assert f"address {ACCEPTED_SENDER}" in maillog and "ACCEPT SG ALL" in maillog, maillog[-2000:]
    assert f"REJECT SG REJECTLIST match {REJECTED_SENDER}" in maillog, maillog[-2000:]


def test_vagrantfile_sender_checks_pass_against_the_vm(lab: Lab) -> None:
    """The Vagrantfile's sender provisioner, run from the namespace that stands in for that VM."""
    if not shutil.which("ruby") or not shutil.which("swaks"):
        pytest.skip("ruby (to read the Vagrantfile) or swaks is not installed")
    scripts = json.loads(subprocess.run(
        ["ruby", str(Path(__file__).with_name("vagrant_scripts.rb")), str(vmlib.ROOT / "Vagrantfile")],
        capture_output=True, text=True, check=True,
    ).stdout)
    (check,) = [s for s in scripts if s["machine"] == "sender" and s["name"] == "each behaviour from its source address"]
    assert check["args"] == [VM_ADDRESS, BLOCKED_SENDER, REJECTED_SENDER, ACCEPTED_SENDER]
    proc = lab.vm.ns.exec(["bash", "-c", check["inline"], "sender-check", *check["args"]], check=False)
    out = proc.stdout + proc.stderr
    (vmlib.ARTIFACTS / "vagrant-sender-check.log").write_text(out)
    assert proc.returncode == 0, out
    assert f"TCPREFUSE  from {BLOCKED_SENDER}: connection refused at SYN" in out
    assert f"REJECT     from {REJECTED_SENDER}: 554 {REJECTED_SENDER} is not welcome here" in out
    assert re.search(rf"ACCEPT     from {re.escape(ACCEPTED_SENDER)}: 250 ", out), out


# ------------------------------------------------------------------------------------ changes
def test_broken_policy_never_reaches_the_host(lab: Lab) -> None:
    before = lab.vm.sudo("sha256sum /etc/netpolicy/policy.yml").stdout
    broken = _policy_with("10.20.0.50")
    broken["netpolicy_policy"]["mail_flow_policies"]["BLOCKED"]["behaviour"] = "tcprefuse"  # unknown key
    path = lab.vm.work / "broken.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    # Straight to the policy task: the steps before it were shown by the first two runs, and each
    # task costs seconds under TCG.
    start = ["--start-at-task", "netpolicy : Write the policy (validated before it replaces the old one)"]
    run = lab.vm.playbook(lab.inventory, *start, "-e", f"@{path}", name="broken")
    assert run.returncode != 0
    assert run.mx.failed == 1
    assert "failed to validate" in run.output or "failed validation" in run.output, run.output[-3000:]
    assert "behaviour" in run.output  # netpolicy validate names the key (file:line: message)
    assert lab.vm.sudo("sha256sum /etc/netpolicy/policy.yml").stdout == before
    assert lab.vm.ssh("systemctl is-active netpolicy", check=False).stdout.strip() == "active"


def test_check_mode_shows_policy_diff_and_kernel_change(lab: Lab) -> None:
    changed = lab.vm.work / "changed.yml"
    changed.write_text(yaml.safe_dump(_policy_with(ACCEPTED_SENDER), sort_keys=False))
    before = lab.vm.sudo("sha256sum /etc/netpolicy/policy.yml").stdout
    run = lab.vm.playbook(lab.inventory, "--check", "--diff", "-e", f"@{changed}", name="check")
    assert run.returncode == 0, run.output[-6000:]
    assert run.mx.changed >= 1
    # Only what the new policy changes reports "changed" (the pip module, for one, must not).
    expected = {
        "netpolicy : Run netpolicy diff against the new policy",
        "netpolicy : Write the policy (validated before it replaces the old one)",
        "netpolicy : Reload netpolicy",
    }
    assert set(run.changed_tasks) <= expected, run.changed_tasks
    # --diff: the policy file change, line by line.
    assert re.search(rf"^\+\s+- {re.escape(ACCEPTED_SENDER)}$", run.output, re.M), run.output[-6000:]
    # netpolicy diff on the new policy: the kernel would gain the new address.
    section = run.output.split("Show the kernel change", 1)[1].split("TASK [", 1)[0]
    assert ACCEPTED_SENDER in section, section
    # Check mode changed nothing on the host.
    assert lab.vm.sudo("sha256sum /etc/netpolicy/policy.yml").stdout == before


def test_policy_change_reloads_serve(lab: Lab) -> None:
    changed = lab.vm.work / "changed.yml"
    if not changed.exists():
        changed.write_text(yaml.safe_dump(_policy_with(ACCEPTED_SENDER), sort_keys=False))
    pid_before = lab.vm.ssh("systemctl show -p MainPID --value netpolicy").stdout.strip()
    run = lab.vm.playbook(lab.inventory, "-e", f"@{changed}", name="run3-change")
    assert run.returncode == 0, run.output[-6000:]
    assert run.mx.changed >= 1
    assert "RUNNING HANDLER [netpolicy : Reload netpolicy]" in run.output
    assert "RUNNING HANDLER [netpolicy : Restart netpolicy]" not in run.output
    assert lab.vm.ssh("systemctl show -p MainPID --value netpolicy").stdout.strip() == pid_before  # reload, not restart

    def refused() -> bool:
        try:
            _connect(lab, ACCEPTED_SENDER).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, f"{ACCEPTED_SENDER} to be refused after the reload", timeout=30, step=1)

