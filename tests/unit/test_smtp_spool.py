"""The message spool: held once, in memory up to the threshold, then in a nameless file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netpolicy.smtp.spool import BLOCK, BudgetExceeded, ByteBudget, Spool


def fill(spool: Spool, total: int, piece: int = 1500) -> bytes:
    data = bytes(range(256)) * (total // 256 + 1)
    data = data[:total]
    for start in range(0, total, piece):
        spool.write(data[start:start + piece])
    return data


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    spool = Spool(ByteBudget(10**6), str(tmp_path), threshold=10_000)
    data = fill(spool, 9_000)
    assert not spool.spooled and b"".join(spool.blocks()) == data


def test_past_the_threshold_it_moves_to_a_file_without_a_name(tmp_path: Path) -> None:
    spool = Spool(ByteBudget(10**7), str(tmp_path), threshold=10_000)
    data = fill(spool, 3 * BLOCK + 123)
    assert spool.spooled
    assert os.listdir(tmp_path) == []  # O_TMPFILE: a killed process leaves nothing to clean
    blocks = list(spool.blocks())
    assert b"".join(blocks) == data and max(map(len, blocks)) <= BLOCK
    assert b"".join(spool.blocks()) == data  # readable again (a retried hand-off)


def test_budget_counts_every_byte_held_and_gets_them_back() -> None:
    budget = ByteBudget(100_000)
    spool = Spool(budget, threshold=1_000)
    fill(spool, 60_000)
    assert budget.used == spool.size == 60_000 and budget.free == 40_000
    with pytest.raises(BudgetExceeded):
        spool.write(b"x" * 40_001)
    assert budget.used == 60_000  # a refused write takes nothing
    spool.discard()
    assert budget.used == 0 and spool.size == 0 and not spool.spooled
    fill(spool, 500)  # usable again after a discard
    assert b"".join(spool.blocks()) == bytes(range(256)) * 1 + bytes(range(244))

