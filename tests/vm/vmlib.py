"""A real Debian 12 VM for the Ansible role: image, network namespace, qemu, SSH, playbooks.

Layout (all created by the test, all removed afterwards but the cached image):

    host namespace                       namespace npvm<hex> (made here)
    ---------------                      ----------------------------------------------
    pytest, ansible-playbook  --netns->  tap0: 10.20.0.1/24   controller (SSH, Ansible)
                                               10.20.0.2      the Vagrantfile's sender VM
                                               10.20.0.66     sender in BLACKLIST  (TCPREFUSE)
                                               10.20.0.77     sender in REJECTLIST (REJECT 554)
                                               10.20.0.99     sender in ALL        (ACCEPT)
                                           |
                                         qemu (TCG, or KVM when it boots) -- virtio-net
                                           |
                                         VM "mx": 10.20.0.10/24, sshd, systemd, the role

The VM has no route anywhere else: everything it installs comes from the image (Debian
packages, built by vm/build-image.sh) and from the wheels the host built.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Netns, unique_name
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
VENV_BIN = ROOT / ".venv" / "bin"
CACHE = Path(os.environ.get("NETPOLICY_VM_CACHE", "/tmp/netpolicy-vm"))
ARTIFACTS = ROOT / "var" / "vm-test"

VM_ADDRESS = "10.20.0.10"
CONTROLLER = "10.20.0.1"
VAGRANT_SENDER = "10.20.0.2"  # the Vagrantfile's sender VM; here one more address in the namespace
BLOCKED_SENDER = "10.20.0.66"
REJECTED_SENDER = "10.20.0.77"
ACCEPTED_SENDER = "10.20.0.99"
SENDERS = (BLOCKED_SENDER, REJECTED_SENDER, ACCEPTED_SENDER)

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.M,
)


def why_not() -> str | None:
    """Why this machine cannot run the real-VM test, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespace, tap device, mmdebstrap)"
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "ssh", "ssh-keygen", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed (make sysdeps installs VMPKGS)"
    if not (VENV_BIN / "ansible-playbook").exists():
        return "ansible-playbook is not in the venv (pip install -e '.[vm]')"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun for the VM's tap device"
    return None


def log(msg: str) -> None:
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_image() -> Path:
    """The cached image directory (built on first use, ~1 min with a Debian mirror)."""
    proc = subprocess.run(
        [str(ROOT / "vm" / "build-image.sh"), str(CACHE)], capture_output=True, text=True, timeout=1200
    )
    if proc.returncode != 0:
        raise RuntimeError(f"vm/build-image.sh failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def build_wheels(dest: Path) -> str:
    """netpolicy + dependencies as wheels, built on the host (the VM reaches no index)."""
    proc = subprocess.run(
        [str(ANSIBLE_DIR / "build-wheels.sh"), str(dest), str(VENV_BIN / "python")],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ansible/build-wheels.sh failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


@dataclass
class Recap:
    ok: int
    changed: int
    unreachable: int
    failed: int
    skipped: int
    line: str


@dataclass
class PlaybookRun:
    args: list[str]
    returncode: int
    output: str
    seconds: float
    recaps: dict[str, Recap] = field(default_factory=dict)

    @property
    def mx(self) -> Recap:
        return self.recaps["mx1"]

    @property
    def changed_tasks(self) -> list[str]:
        """Names of the tasks and handlers that reported "changed"."""
        names: list[str] = []
        current = ""
        for line in self.output.splitlines():
            m = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \**$", line)
            if m:
                current = m.group(1)
            elif line.startswith("changed:") and current and (not names or names[-1] != current):
                names.append(current)
        return names


@dataclass
class Vm:
    image: Path
    work: Path
    ns: Netns
    accel: str = ""
    proc: subprocess.Popen[bytes] | None = None
    boot_seconds: float = 0.0

    @property
    def key(self) -> Path:
        return self.image / "id_ed25519"

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, image: Path, work: Path) -> "Vm":
        ns = Netns.create(unique_name("npvm"))
        ns.exec(["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])
        ns.exec(["ip", "addr", "add", f"{CONTROLLER}/24", "dev", "tap0"])
        for address in (VAGRANT_SENDER, *SENDERS):
            ns.exec(["ip", "addr", "add", f"{address}/24", "dev", "tap0"])
        ns.exec(["ip", "link", "set", "tap0", "up"])
        return cls(image=image, work=work, ns=ns)

    def _qemu(self, accel: str) -> subprocess.Popen[bytes]:
        overlay = self.work / "mx.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.image / "rootfs.qcow2"), str(overlay)],
            check=True,
        )
        self.console.unlink(missing_ok=True)
        tcg_cpu = os.environ.get("NETPOLICY_VM_CPU", "max")
        cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", tcg_cpu]
        args = [
            "qemu-system-x86_64", "-name", "netpolicy-mx", *cpu, "-smp", "2", "-m", "1536",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:14:00:0a",
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}", "-no-reboot",
        ]
        return self.ns.popen(args, stdout=subprocess.DEVNULL, stderr=open(self.work / "qemu.err", "wb"))

    def _console_has(self, text: str) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return text in self.console.read_text(errors="replace")
        return False

    def boot(self, accel: str = "auto", timeout: float = 300) -> None:
        """Boot and wait for SSH. auto: KVM if its kernel starts within 10 s, else TCG."""
        started = time.monotonic()
        tries = ["kvm", "tcg"] if accel == "auto" else [accel]
        if "kvm" in tries and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            tries.remove("kvm")
        # A KVM that hung once on this host kernel is not tried again (saves 10 s a run).
        verdict = CACHE / f"kvm-hangs-{os.uname().release}"
        if accel == "auto" and "kvm" in tries and verdict.exists():
            log(f"KVM skipped: it hung before on this host kernel ({verdict})")
            tries.remove("kvm")
        for choice in tries:
            self.proc = self._qemu(choice)
            if choice == "kvm" and len(tries) > 1:
                proc = self.proc
                with contextlib.suppress(AssertionError):  # judged just below
                    wait_until(lambda: proc.poll() is not None or self._console_has("Linux version"),
                               "the guest kernel's first line under KVM", timeout=10, step=0.5)
                if not self._console_has("Linux version"):
                    log("KVM: the guest kernel did not start within 10 s (a known hang here); falling back to TCG")
                    self._kill()
                    verdict.parent.mkdir(parents=True, exist_ok=True)
                    verdict.write_text("the guest kernel printed nothing within 10 s under KVM\n")
                    continue
            self.accel = choice
            log(f"qemu started with {choice}")
            break
        self.wait_ssh(timeout)
        self.boot_seconds = time.monotonic() - started
        log(f"SSH up after {self.boot_seconds:.0f} s ({self.accel})")

    def wait_ssh(self, timeout: float) -> None:
        def ssh_answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited ({self.proc.returncode}): {(self.work / 'qemu.err').read_text()[-2000:]}")
            return self.ssh("true", check=False, timeout=15).returncode == 0

        try:
            wait_until(ssh_answers, "SSH in the guest", timeout=timeout, step=2)
        except AssertionError as exc:
            raise RuntimeError(f"no SSH after {timeout:.0f} s; console tail:\n{self.console.read_text(errors='replace')[-3000:]}") from exc

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def destroy(self) -> None:
        self._kill()
        self.ns.delete()

    # ---------------------------------------------------------------- access
    def ssh_args(self) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"deploy@{VM_ADDRESS}",
        ]

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns.name, *self.ssh_args(), command],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ssh {command!r} failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout.strip()}")
        return proc

    def sudo(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.ssh(f"sudo sh -c {shlex.quote(command)}", check=check, timeout=timeout)

    def write_inventory(self, wheel_dir: Path) -> Path:
        inv = self.work / "inventory"
        (inv / "group_vars").mkdir(parents=True, exist_ok=True)
        (inv / "hosts.yml").write_text(
            "all:\n  children:\n    mx:\n      hosts:\n        mx1:\n"
            f"          ansible_host: {VM_ADDRESS}\n"
            "          ansible_user: deploy\n"
            f"          ansible_ssh_private_key_file: {self.key}\n"
            "          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n"
        )
        # The lab policy comes from ansible/group_vars/mx.yml, beside the playbook.
        (inv / "group_vars" / "all.yml").write_text(
            "# The VM reaches no mirror and no index: packages are in the image, wheels come from the host.\n"
            "netpolicy_apt_update_cache: false\n"
            "netpolicy_build_wheels: false\n"
            f"netpolicy_wheel_dir: {wheel_dir}\n"
            "# The shared state store on the VM itself (redis-server is in the image), two workers using it.\n"
            "netpolicy_state_redis_install: true\n"
            "netpolicy_workers: 2\n"
        )
        return inv / "hosts.yml"

    def playbook(self, inventory: Path, *extra: str, name: str, timeout: float = 900) -> PlaybookRun:
        env = dict(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_LOCAL_TEMP=str(self.work / "ansible-local"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.work / "cp"),
            PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="task_timer",
        )
        args = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE_DIR / "site.yml"), *extra]
        log(f"ansible-playbook ({name}) {' '.join(extra)}")
        started = time.monotonic()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        logfile = ARTIFACTS / f"{name}.log"  # written as it runs: tail -f it to follow a slow TCG run
        with open(logfile, "w") as out:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.ns.name, *args],
                stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env, cwd=str(ANSIBLE_DIR),
            )
        seconds = time.monotonic() - started
        output = logfile.read_text()
        recaps = {
            m["host"]: Recap(int(m["ok"]), int(m["changed"]), int(m["unreachable"]), int(m["failed"]), int(m["skipped"]), m.group(0))
            for m in RECAP.finditer(output)
        }
        run = PlaybookRun(args, proc.returncode, output, seconds, recaps)
        log(f"ansible-playbook ({name}) rc={proc.returncode} in {seconds:.0f} s: " + " | ".join(r.line for r in recaps.values()))
        return run

