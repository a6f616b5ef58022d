#!/usr/bin/env python3
"""What this machine must have for `make run` and `make test`, checked by what each tool can do.

One table names every Debian package the project uses, with the capability that proves it is
there. ``make sysdeps`` installs the packages of the failing checks, and ``make doctor`` runs the
checks again and names the package of each one still failing.

Why capabilities and not ``dpkg -s``: Debian packages are installed with
``--no-install-recommends``, and a tool can be present without what it only recommends. swaks
without ``libnet-ssleay-perl`` answers ``*** TLS not available: requires Net::SSLeay``, so the
TLS end-to-end test failed on a fresh machine while ``dpkg -s swaks`` said all was well (and a
developer machine with the package installed by hand passed).

Standard library only: it runs before the venv exists.

    tools/doctor.py [--scope run|test] [--packages]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass


def _has(*commands: str) -> Callable[[], bool]:
    """Every command is on PATH (or, given as an absolute path, exists)."""
    return lambda: all(os.path.exists(c) if c.startswith("/") else shutil.which(c) for c in commands)


def _prints(argv: list[str], needle: str) -> Callable[[], bool]:
    def check() -> bool:
        if not shutil.which(argv[0]):
            return False
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return needle in proc.stdout + proc.stderr

    return check


@dataclass(frozen=True)
class Need:
    capability: str
    package: str
    scope: str  # "run": make run and the tests; "test": the tests only
    check: Callable[[], bool]


NEEDS: tuple[Need, ...] = (
    Need("ip netns, veth, ss (namespaces for every wire test)", "iproute2", "run", _has("ip", "ss")),
    Need("nft (the nftables backend, its tests)", "nftables", "run", _has("nft")),
    Need("iptables-legacy (the iptables backend)", "iptables", "run", _has("iptables-legacy", "iptables-legacy-save")),
    Need("ipset (iptables backend sets)", "ipset", "run", _has("ipset")),
    Need("ps, pgrep, pkill", "procps", "run", _has("ps", "pgrep", "pkill")),
    Need("setpriv, taskset (unprivileged serve test, bench CPU pinning)", "util-linux", "test", _has("setpriv", "taskset")),
    Need("tcpdump (wire captures in the namespace tests)", "tcpdump", "test", _has("tcpdump")),
    Need("swaks (SMTP client in the e2e tests)", "swaks", "test", _has("swaks")),
    Need("swaks STARTTLS (swaks only recommends Net::SSLeay)", "libnet-ssleay-perl", "test",
         _prints(["swaks", "--support"], "=== TLS supported")),
    Need("postfix, postconf, smtp-sink, smtp-source (next hop, benches)", "postfix", "test",
         _has("/usr/sbin/postfix", "postconf", "smtp-sink", "smtp-source")),
    Need("openssl (test certificates)", "openssl", "test", _has("openssl")),
    Need("dnsmasq (a real DNS server for the DNS-list tests; -base: no system service)", "dnsmasq-base", "test",
         _has("/usr/sbin/dnsmasq")),
    Need("redis-server (a real state store for the shared-counter tests; its service is never started by them)", "redis-server",
         "test", _has("/usr/bin/redis-server")),
    Need("redis-cli (the Sentinel tests ask the sentinel and the replica with it)", "redis-tools", "test", _has("redis-cli")),
    Need("logrotate (rotates serve's mail log with packaging/netpolicy.logrotate)", "logrotate", "test", _has("logrotate")),
    Need("rspamd (message checks: the scanner the e2e tests and the scanned bench ask)", "rspamd", "test",
         _has("/usr/bin/rspamd")),
    Need("clamd (rspamd's antivirus scanner in the tests; started with a local EICAR signature)", "clamav-daemon", "test",
         _has("/usr/sbin/clamd")),
    Need("qemu-system-x86_64 (the real-VM test)", "qemu-system-x86", "test", _has("qemu-system-x86_64")),
    Need("qemu-img (VM disk images)", "qemu-utils", "test", _has("qemu-img")),
    Need("mmdebstrap (the VM image)", "mmdebstrap", "test", _has("mmdebstrap")),
    Need("mkfs.ext4 (the VM image)", "e2fsprogs", "test", _has("mkfs.ext4")),
    Need("ssh, ssh-keygen (Ansible into the VM)", "openssh-client", "test", _has("ssh", "ssh-keygen")),
    Need("vagrant (vagrant validate, vagrant up)", "vagrant", "test", _has("vagrant")),
    Need("libvirtd (vagrant up; the test starts it in its own namespace; -daemon: no system service)",
         "libvirt-daemon", "test", _has("libvirtd")),
    Need("libvirt's QEMU driver (vagrant up with libvirt.driver qemu)", "libvirt-daemon-driver-qemu", "test",
         _has("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")),
    Need("debugfs (puts the vagrant user into the box image without mounting it)", "e2fsprogs", "test", _has("debugfs")),
    Need("vagrant-libvirt plugin (validates the libvirt provider block)", "vagrant-libvirt", "test",
         lambda: os.path.isdir("/usr/share/vagrant-plugins/plugins.d") and any(
             "libvirt" in name for name in os.listdir("/usr/share/vagrant-plugins/plugins.d"))),
)


def needed(scope: str) -> list[Need]:
    """``make run`` needs the "run" rows; the tests need every row."""
    return [need for need in NEEDS if scope == "test" or need.scope == "run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scope", choices=("run", "test"), default="test")
    parser.add_argument("--packages", action="store_true", help="print the packages to install, one a line, and exit 0")
    args = parser.parse_args()
    wanted = needed(args.scope)
    missing = [need for need in wanted if not need.check()]
    if args.packages:
        for package in dict.fromkeys(need.package for need in missing):
            print(package)
        return 0
    for need in missing:
        print(f"missing: {need.capability}: apt-get install --no-install-recommends {need.package}", file=sys.stderr)
    if missing:
        return 1
    print(f"doctor: all {len(wanted)} capabilities for `make {args.scope}` are present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
