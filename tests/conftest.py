"""Shared fixtures. Namespaced tests skip with a reason when the machine cannot make namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.netns import NetPair, net_pair


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("ip"):
        return "iproute2 is not installed"
    return None


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    reason = _can_netns()
    if reason:
        pytest.skip(reason)
    with net_pair() as pair:
        yield pair
