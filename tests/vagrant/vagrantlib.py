"""Vagrant itself on the project's Vagrantfile: libvirtd in a namespace made here, the box, `vagrant`.

Why a directory of its own and not tests/vm: this harness is Vagrant + libvirtd, not qemu driven
by hand, and `make vagrant-test` runs only it. It reuses the real-VM test's image
(vm/build-image.sh, via tests/vagrant/build-box.sh) and its recap parser.

Layout: libvirtd runs inside a network namespace made here, in a private mount namespace whose
/run/libvirt, /var/lib/libvirt, /etc/libvirt, /var/cache/libvirt and /var/log/libvirt are bind
mounts of a temporary directory. Its networks (the management network 10.20.1.0/24 and the
private 10.20.0.0/24), their dnsmasq and their iptables-nft rules are all in that namespace;
`vagrant` runs there too (it must reach the VMs by SSH) with VAGRANT_HOME and each lab's .vagrant
directory in the temporary directory. The host's namespace and ruleset are untouched (checked).

One libvirtd and one box serve both labs (tests/vagrant/conftest.py): the two-VM lab
(test_vagrant_up.py), then the fleet lab (test_vagrant_up_fleet.py, NETPOLICY_LAB=fleet), each
destroyed before the next comes up. The box is added under the name the Vagrantfile asks for
(debian/bookworm64), so each run is the plain `vagrant up` a user types. NETPOLICY_VM_TEST=skip
skips; =require (make vagrant-test) fails instead of skipping. Outputs and phase timings are
kept in var/vm-test/vagrant-*.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.netns import Netns, run, unique_name
from tests.support.wait import wait_until
from tests.vm import vmlib

MODE = os.environ.get("NETPOLICY_VM_TEST", "auto")  # auto | require | skip
BOX_NAME = "debian/bookworm64"
WHEELS = vmlib.ROOT / "var" / "wheels"  # site.yml's default netpolicy_wheel_dir
LIBVIRT_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/etc/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
# libvirt runs QEMU as root here (no dynamic ownership to manage in a throw-away lab) and writes
# the guest's output to files, so virtlogd is not needed.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""


def why_not() -> str | None:
    """Why this machine cannot run vagrant-libvirt here, or None when it can."""
    reason = vmlib.why_not()
    if reason:
        return reason
    for tool in ("vagrant", "libvirtd", "unshare", "debugfs", "dnsmasq", "iptables"):
        if not shutil.which(tool):
            return f"{tool} is not installed (make sysdeps installs it)"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, check=False).stdout
    if "vagrant-libvirt" not in plugins:
        return "the vagrant-libvirt plugin is not installed (Debian package vagrant-libvirt)"
    return None


def _passwd_with_qemu_user(work: Path) -> list[str]:
    """Mount commands giving libvirtd a libvirt-qemu user in its mount namespace only.

    libvirt's QEMU driver resolves its compiled-in user (libvirt-qemu) even when qemu.conf names
    root, and fails without it. libvirt-daemon-system would create it, but on a systemd host it
    also starts libvirtd and its default NAT network in the host's namespace: not wanted here.
    """
    mounts = []
    for name, line in (("passwd", "libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin"),
                       ("group", "libvirt-qemu:x:64055:")):
        text = Path(f"/etc/{name}").read_text()
        if not any(row.startswith("libvirt-qemu:") for row in text.splitlines()):
            (work / name).write_text(text.rstrip("\n") + f"\n{line}\n")
            mounts.append(f"mount --bind {work / name} /etc/{name}")
    return mounts


def readable(output: str) -> str:
    """Vagrant's box upload progress is one line rewritten thousands of times; keep the rest."""
    lines = output.replace("\x1b[K", "\n").splitlines()
    return "\n".join(line for line in lines if not line.startswith("Progress:")) + "\n"


def _start_libvirtd(ns: Netns, work: Path) -> subprocess.Popen[bytes]:
    mounts = []
    for target in LIBVIRT_DIRS:
        source = work / "libvirt" / target.strip("/").replace("/", "-")
        source.mkdir(parents=True)
        mounts.append(f"mkdir -p {target} && mount --bind {source} {target}")
    (work / "libvirt" / "etc-libvirt" / "qemu.conf").write_text(QEMU_CONF)
    script = " && ".join(["mount --make-rprivate /", *mounts, *_passwd_with_qemu_user(work),
                          f"exec libvirtd -p {work}/libvirtd.pid"])
    proc = ns.popen(["unshare", "-m", "sh", "-c", script],
                    stdout=subprocess.DEVNULL, stderr=open(work / "libvirtd.log", "wb"))
    sock = work / "libvirt" / "run-libvirt" / "libvirt-sock"
    wait_until(lambda: sock.exists() or proc.poll() is not None, "libvirtd's socket", timeout=30)
    if proc.poll() is not None:
        raise RuntimeError(f"libvirtd exited:\n{(work / 'libvirtd.log').read_text()[-3000:]}")
    return proc


@dataclass
class Host:
    """libvirtd and the added box in the test's namespace, shared by the labs."""

    ns: Netns
    work: Path
    env: dict[str, str]
    host_ruleset_before: str
    timings: dict[str, float] = field(default_factory=dict)

    def vagrant(self, *args: str, name: str, lab: str = "", timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        """Run vagrant in the namespace for ``lab`` ("" is the two-VM lab, "fleet" the fleet lab);
        its output is kept as var/vm-test/vagrant-<name>.log."""
        env = {**self.env, "NETPOLICY_LAB": lab, "VAGRANT_DOTFILE_PATH": str(self.work / f"dot-vagrant{'-' + lab if lab else ''}")}
        started = time.monotonic()
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns.name, "vagrant", *args, "--no-color"],
            cwd=vmlib.ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        self.timings[name] = round(time.monotonic() - started, 1)
        (vmlib.ARTIFACTS / f"vagrant-{name}.log").write_text(readable(proc.stdout + proc.stderr))
        return proc


def host(work: Path) -> Iterator[Host]:
    """The package fixture's body: box, wheels, namespace, libvirtd, `vagrant box add`."""
    if MODE == "skip":
        pytest.skip("NETPOLICY_VM_TEST=skip")
    reason = why_not()
    if reason:
        if MODE == "require":
            pytest.fail(f"make vagrant-test cannot run here: {reason}")
        pytest.skip(f"vagrant test: {reason}")
    vmlib.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    host_ruleset_before = run(["nft", "list", "ruleset"]).stdout
    timings: dict[str, float] = {}
    started = time.monotonic()
    box = subprocess.run([str(Path(__file__).with_name("build-box.sh")), str(work / "box")],
                         capture_output=True, text=True, timeout=1500, check=False)
    if box.returncode != 0:
        raise RuntimeError(f"build-box.sh failed:\n{box.stderr[-4000:]}")
    timings["box"] = round(time.monotonic() - started, 1)
    # The namespace has no route out: the wheels site.yml builds on the controller are built here
    # first, where the package index is reachable; inside, pip finds them all (PIP_NO_INDEX).
    started = time.monotonic()
    vmlib.build_wheels(WHEELS)
    build_deps = work / "build-deps"  # pyproject's build-system requires, for pip's build isolation
    subprocess.run([str(vmlib.VENV_BIN / "pip"), "download", "-q", "-d", str(build_deps), "setuptools>=68", "wheel"],
                   check=True, timeout=300)
    timings["wheels"] = round(time.monotonic() - started, 1)
    ns = Netns.create(unique_name("npvag"))
    libvirtd = None
    env = {
        **os.environ,
        "VAGRANT_HOME": str(work / "vagrant-home"),
        "LIBVIRT_DEFAULT_URI": f"qemu:///system?socket={work}/libvirt/run-libvirt/libvirt-sock",
        "NETPOLICY_LIBVIRT_DRIVER": "qemu",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(build_deps),
        "PATH": f"{vmlib.VENV_BIN}:{os.environ['PATH']}",
    }
    shared = Host(ns=ns, work=work, env=env, host_ruleset_before=host_ruleset_before, timings=timings)
    try:
        libvirtd = _start_libvirtd(ns, work)
        added = shared.vagrant("box", "add", "--name", BOX_NAME, "--provider", "libvirt",
                               box.stdout.strip().splitlines()[-1], name="box-add", timeout=300)
        assert added.returncode == 0, added.stdout + added.stderr
        yield shared
    finally:
        if libvirtd is not None:
            libvirtd.terminate()
            libvirtd.wait(timeout=30)
        ns.delete()  # dnsmasq and any qemu left by libvirt live in the namespace: killed here
        (vmlib.ARTIFACTS / "vagrant-summary.json").write_text(json.dumps({"timings_s": timings}, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Lab:
    """One `vagrant up` of the Vagrantfile (``name`` is NETPOLICY_LAB) and its output."""

    host: Host
    name: str
    up: subprocess.CompletedProcess[str]

    def vagrant(self, *args: str, name: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return self.host.vagrant(*args, name=f"{self.name}-{name}" if self.name else name, lab=self.name, timeout=timeout)

    @property
    def output(self) -> str:
        return readable(self.up.stdout + self.up.stderr)


def lab(shared: Host, name: str) -> Iterator[Lab]:
    """A lab fixture's body: `vagrant up`, and `vagrant destroy -f` whatever happened."""
    brought = Lab(shared, name, subprocess.CompletedProcess([], 0))
    try:
        brought.up = brought.vagrant("up", name="up")
        yield brought
    finally:
        brought.vagrant("destroy", "-f", name="destroy-cleanup", timeout=300)


def last_recap(output: str, host: str) -> re.Match[str]:
    """``host``'s last PLAY RECAP line in a vagrant output (provisioning may run the play twice)."""
    recaps = [m for m in vmlib.RECAP.finditer(output) if m["host"] == host]
    assert recaps, f"no PLAY RECAP for {host}:\n{output[-6000:]}"
    return recaps[-1]
