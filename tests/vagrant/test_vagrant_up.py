"""`vagrant up` on the project's Vagrantfile, run by Vagrant itself (provider libvirt, qemu/TCG):
the two-VM lab, mx and the sender. The harness is tests/vagrant/vagrantlib.py. The second
provisioning with changed=0 is checked on the fleet lab's mx1, which runs every task this mx
does and the store's too: one re-run instead of two (85 s for mx1 here, under TCG; the whole
of tests/vagrant takes 17.6 min)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.netns import run
from tests.vagrant import vagrantlib
from tests.vagrant.vagrantlib import Host, Lab

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def lab(vagrant_host: Host) -> Iterator[Lab]:
    yield from vagrantlib.lab(vagrant_host, "")


def test_vagrant_up_brings_up_mx_and_the_sender_whose_checks_pass(lab: Lab) -> None:
    out = lab.output
    assert lab.up.returncode == 0, out[-6000:]
    recap = vagrantlib.last_recap(out, "mx")
    assert (recap["failed"], recap["unreachable"]) == ("0", "0"), out[-6000:]
    for line in ("TCPREFUSE  from 10.20.0.66", "REJECT     from 10.20.0.77: 554 ", "ACCEPT     from 10.20.0.99: 250 "):
        assert f"sender: {line}" in out, out[-4000:]


def test_libvirt_rules_land_in_the_namespace_not_on_the_host(lab: Lab) -> None:
    assert "LIBVIRT_" in lab.host.ns.exec(["nft", "list", "ruleset"]).stdout
    assert run(["nft", "list", "ruleset"]).stdout == lab.host.host_ruleset_before


def test_vagrant_destroy_removes_both_machines(lab: Lab) -> None:
    gone = lab.vagrant("destroy", "-f", name="destroy", timeout=300)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    status = lab.vagrant("status", name="status-after-destroy", timeout=120)
    assert status.stdout.count("not created") == 2, status.stdout
