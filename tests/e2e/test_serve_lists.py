"""``file:`` lists under ``netpolicy serve``: a list changed on disk reaches the kernel on its own.

SPEC.md section 7: lists are re-read when the file changes (written in place or renamed over),
an error in one is reported as ``list.txt:LINE`` and changes nothing, and only the difference
goes to the kernel. The daemon runs in the server namespace, the clients in the other one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.support.serve import Served
from tests.support.serve_policy import ACCEPTED, BLOCKED, LATER, REJECTED, policy_text
from tests.support.wait import wait_until

NEIGHBOUR = "198.51.100.6"  # LATER's neighbour: never listed, so it must keep its 220


def _write_list(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def _element_changes(s: Served) -> list[int]:
    return [int(n) for n in re.findall(r"kernel at policy generation \w+ \((\d+) element changes", s.stderr_text())]


def test_a_list_renamed_over_or_written_in_place_reloads_and_a_broken_one_changes_nothing(served: Served) -> None:
    served.pair.add_client_address(NEIGHBOUR)
    lists = served.tmp / "lists"
    lists.mkdir()
    drop = lists / "drop.txt"
    _write_list(drop, ["# DROP-style list", "10.99.0.0/16 ; SBL1", "10.98.0.0/24"])
    text = policy_text(served.pair.server_v4, served.tmp / "maildir", blacklist=f'{BLOCKED}, "file:lists/drop.txt"')
    served.write_policy(text=text)
    wait_until(lambda: "kernel at policy generation" in served.stderr_text() and len(_element_changes(served)) >= 2,
               "the policy with the list applied")
    assert served.outcome(LATER) == "220"

    _write_list(drop, ["# DROP-style list", "10.99.0.0/16 ; SBL1", "10.98.0.0/24", LATER])
    renamed = time.monotonic()
    wait_until(lambda: served.outcome(LATER, timeout=0.3) == "refused", "the added line refused at SYN", timeout=5, step=0.05)
    took = time.monotonic() - renamed
    assert took < 1.0, f"one added line took {took:.2f} s to reach the kernel"
    assert _element_changes(served)[-1] <= 2, served.stderr_text()  # the difference, not the list
    assert "drop.txt changed" in served.stderr_text()
    assert served.outcome(NEIGHBOUR) == "220" and served.outcome(BLOCKED) == "refused"

    # A broken line: refused with list.txt:LINE, the kernel keeps what it had.
    _write_list(drop, ["# DROP-style list", "10.99.0.0/16 ; SBL1", "10.98.0.0/24", LATER, "10.1.1.300"])
    wait_until(lambda: f"{drop}:5:" in served.stderr_text(), "the broken list's file:line")
    assert served.outcome(LATER) == "refused" and served.outcome(ACCEPTED) == "220"
    assert served.outcome(REJECTED) == "554"

    # Written in place (same inode): the line taken out again.
    with open(drop, "w") as fh:
        fh.write("10.99.0.0/16\n10.98.0.0/24\n")
    wait_until(lambda: served.outcome(LATER, timeout=0.3) == "220", "the removed line back in userland", timeout=5)
    assert served.outcome(BLOCKED) == "refused"
