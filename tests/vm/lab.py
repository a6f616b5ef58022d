"""Keep the test VM up by hand, for working on the role:

    .venv/bin/python -m tests.vm.lab up            # build image + wheels, boot, print how to reach it
    .venv/bin/python -m tests.vm.lab play [ARGS]   # ansible-playbook site.yml ARGS against it
    .venv/bin/python -m tests.vm.lab ssh [CMD]     # run CMD on the VM (or print the ssh command)
    .venv/bin/python -m tests.vm.lab down          # stop qemu, delete the namespace

State lives in $NETPOLICY_VM_CACHE/lab (default /tmp/netpolicy-vm/lab). Same network layout as the test (tests/vm/vmlib.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.netns import Netns
from tests.vm import vmlib

STATE_DIR = vmlib.CACHE / "lab"  # not var/: a make clean in the work tree must not orphan a running VM
STATE = STATE_DIR / "state.json"


def _load() -> vmlib.Vm:
    state = json.loads(STATE.read_text())
    vm = vmlib.Vm(image=Path(state["image"]), work=Path(state["work"]), ns=Netns(state["ns"]), accel=state["accel"])
    return vm


def up() -> None:
    if STATE.exists():
        sys.exit(f"already up ({STATE}); run down first")
    reason = vmlib.why_not()
    if reason:
        sys.exit(reason)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    image = vmlib.build_image()
    vmlib.build_wheels(STATE_DIR / "wheels")
    vm = vmlib.Vm.create(image, STATE_DIR)
    vm.boot(os.environ.get("NETPOLICY_VM_ACCEL", "auto"))
    vm.write_inventory(STATE_DIR / "wheels")
    assert vm.proc is not None
    STATE.write_text(json.dumps({"image": str(image), "work": str(STATE_DIR), "ns": vm.ns.name, "accel": vm.accel, "pid": vm.proc.pid}))
    print(f"up: namespace {vm.ns.name}, VM {vmlib.VM_ADDRESS}; ssh: ip netns exec {vm.ns.name} {' '.join(vm.ssh_args())}")


def down() -> None:
    if not STATE.exists():
        return
    state = json.loads(STATE.read_text())
    try:
        os.kill(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    Netns(state["ns"]).delete()
    STATE.unlink()


def main(argv: list[str]) -> None:
    cmd, rest = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "play":
        vm = _load()
        run = vm.playbook(vm.work / "inventory" / "hosts.yml", *rest, name="lab")
        print(run.output)
        sys.exit(run.returncode)
    elif cmd == "ssh":
        vm = _load()
        if not rest:
            print(f"ip netns exec {vm.ns.name} {' '.join(vm.ssh_args())}")
            return
        sys.exit(subprocess.call(["ip", "netns", "exec", vm.ns.name, *vm.ssh_args(), " ".join(rest)]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
