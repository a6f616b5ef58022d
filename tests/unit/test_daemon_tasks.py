"""serve's background work: a loop that fails is logged, counted and started again; work handed
to the daemon's task group is awaited, never dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from netpolicy.daemon import serve
from netpolicy.daemon.serve import Daemon, ServeOptions


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Daemon:
    monkeypatch.setattr(serve, "RESTART_DELAY", 0.01)
    return Daemon(ServeOptions(policy_path="/nonexistent/policy.yml"))


async def test_a_loop_that_raises_is_logged_counted_and_started_again(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"bug {runs}")

    with caplog.at_level(logging.ERROR, logger="netpolicy.daemon.serve"):
        async with asyncio.TaskGroup() as tasks:
            daemon._tasks = tasks
            supervised = daemon._supervise("flaky loop", flaky)
            await asyncio.wait_for(supervised, 5)
    assert runs == 3
    assert daemon.view.task_failures == {"flaky loop": 2}
    failures = [r for r in caplog.records if "flaky loop failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # with the traceback


async def test_spawned_work_is_awaited_before_the_group_ends(daemon: Daemon) -> None:
    finished: list[str] = []

    async def slow_reload() -> None:
        await asyncio.sleep(0.05)
        finished.append("reload")

    async with asyncio.TaskGroup() as tasks:
        daemon._tasks = tasks
        daemon._spawn(slow_reload())
    assert finished == ["reload"]
