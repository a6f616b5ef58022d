"""A ``$NOTIFY_SOCKET`` for a daemon a test starts, read the way systemd reads it.

``netpolicy serve`` says READY=1 once its kernel plan is applied, every listener accepts and its
signal handlers are installed (netpolicy/daemon/serve.py). Waiting for that, rather than for the
first banner, is what systemd's ``Type=notify`` does, and it leaves no window in which a SIGHUP
would still kill a daemon that already answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.wait import wait_until


class NotifySocket:
    """Start the daemon with ``env=notify.env()``, then ``notify.ready(proc)``; ``close()`` at
    the end. ``directory`` must be searchable by the daemon's user."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.states: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self.path.chmod(0o777)  # an unprivileged daemon (uid nobody) sends here too
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """This process's environment plus NOTIFY_SOCKET (``ip netns exec`` passes it on)."""
        return {**os.environ, "NOTIFY_SOCKET": str(self.path)}

    def received(self) -> list[str]:
        """Every state line sent so far (one datagram may carry several, e.g. READY=1 and STATUS=)."""
        while True:
            try:
                datagram = self._sock.recv(4096)
            except BlockingIOError:
                return self.states
            self.states.extend(datagram.decode().splitlines())

    def ready(self, proc: subprocess.Popen[bytes], timeout: float = 20.0, stderr: Path | None = None) -> None:
        """Wait for READY=1; fail at once, with its stderr, if the daemon exits first."""

        def said_ready() -> bool:
            if proc.poll() is not None:
                text = stderr.read_text() if stderr is not None else ""
                raise AssertionError(f"the daemon exited {proc.returncode} before READY=1: {text}")
            return "READY=1" in self.received()

        wait_until(said_ready, "READY=1 from the daemon", timeout=timeout)
