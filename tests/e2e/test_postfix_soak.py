"""Soak with faults (issue 14 item 3), short: 2,000 messages through serve to a real Postfix
while Postfix is killed and restarted and stalled, and serve is restarted and crashed. See
tests/support/soak.py; bench/soak_postfix.py runs the same with 20,000."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.netns import NetPair
from tests.support.soak import Soak, soak_setup

pytestmark = pytest.mark.skipif(not shutil.which("postfix"), reason="postfix (Debian package postfix) is not installed")


async def test_no_acknowledged_message_lost_or_duplicated_through_faults(netpair: NetPair, tmp_path: Path) -> None:
    with soak_setup(netpair, tmp_path) as (served, hop):
        figures = await Soak(netpair, served, hop, messages=2000, sessions=20).run()
    print(figures.report())
    assert [name for name, _ in figures.faults] == [
        "hop killed and restarted", "hop stalled", "hop killed and restarted", "serve restarted",
        "hop killed and restarted", "serve crashed and restarted"]
    outcomes = figures.outcomes
    assert sum(outcomes.values()) == 2000 and outcomes["5xx"] == 0
    assert outcomes["250"] >= 1000, figures.report()
    assert outcomes["4xx"] + outcomes["dropped"] > 0, figures.report()  # the faults were felt
    assert figures.lost == 0 and figures.duplicated == 0, figures.report()
