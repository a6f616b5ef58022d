"""`NETPOLICY_LAB=fleet vagrant up`: two gateways sharing the state store on mx1, and the sender's
check that a host promoted on mx1 is refused at SYN on mx2 (SPEC.md section 10). Runs after the
two-VM lab (test_vagrant_up.py), on the same libvirtd and box (tests/vagrant/vagrantlib.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.vagrant import vagrantlib
from tests.vagrant.vagrantlib import Host, Lab

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def fleet(vagrant_host: Host) -> Iterator[Lab]:
    yield from vagrantlib.lab(vagrant_host, "fleet")


def test_both_gateways_are_provisioned_and_only_mx1_runs_the_store(fleet: Lab) -> None:
    out = fleet.output
    assert fleet.up.returncode == 0, out[-6000:]
    for host in ("mx1", "mx2"):
        recap = vagrantlib.last_recap(out, host)
        assert (recap["failed"], recap["unreachable"]) == ("0", "0"), out[-6000:]
    store_tasks = re.findall(r"^TASK \[netpolicy : Install redis-server\].*\n(\w+): \[(\w+)\]", out, re.M)
    assert [host for _, host in store_tasks] == ["mx1"], store_tasks


def test_the_sender_sees_a_promotion_on_mx1_refused_at_syn_on_mx2(fleet: Lab) -> None:
    out = fleet.output
    assert fleet.up.returncode == 0, out[-6000:]
    for line in ("TCPREFUSE  from 10.20.0.66", "REJECT     from 10.20.0.77: 554 ", "ACCEPT     from 10.20.0.99: 250 ",
                 "STORE      10.20.0.10:6379 lists both gateways: mx1 mx2",
                 "PROMOTED   10.20.0.55 refused at SYN by 10.20.0.10 after 3 x 554",
                 "SHARED     10.20.0.55 refused at SYN by 10.20.0.11 ",
                 "UP         10.20.0.11 greets 10.20.0.99: 220 "):
        assert f"sender: {line}" in out, out[-4000:]


def test_a_second_vagrant_provision_of_mx1_changes_nothing(fleet: Lab) -> None:
    assert fleet.up.returncode == 0, "vagrant up failed"
    again = fleet.vagrant("provision", "mx1", name="provision-mx1")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    recap = vagrantlib.last_recap(out, "mx1")
    assert (recap["changed"], recap["failed"]) == ("0", "0"), out[-6000:]


def test_vagrant_destroy_removes_the_three_machines(fleet: Lab) -> None:
    gone = fleet.vagrant("destroy", "-f", name="destroy", timeout=300)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    status = fleet.vagrant("status", name="status-after-destroy", timeout=120)
    assert status.stdout.count("not created") == 3, status.stdout
