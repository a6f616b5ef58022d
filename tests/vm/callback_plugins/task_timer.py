"""Print how long each task took (the VM runs under TCG: where do the minutes go?)."""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timer
type: aggregate
short_description: seconds per task, printed after each task and summed at the end
description: Used by the real-VM test (tests/vm) to report where a playbook run spends its time.
requirements: [enable in the callbacks_enabled setting]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._current: tuple[str, float] | None = None
        self._times: list[tuple[str, float]] = []

    def _close(self) -> None:
        if self._current is not None:
            name, started = self._current
            self._times.append((name, time.monotonic() - started))
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):  # noqa: ANN001
        self._close()
        self._current = (task.get_name(), time.monotonic())

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start  # type: ignore[assignment]

    def v2_playbook_on_stats(self, stats):  # noqa: ANN001
        self._close()
        self._display.display("TASK TIMES (s) " + "*" * 50)
        for name, seconds in self._times:
            self._display.display(f"{seconds:7.1f}  {name}")
        self._display.display(f"{sum(s for _, s in self._times):7.1f}  total")
