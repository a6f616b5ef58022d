"""``netpolicy serve`` run for real inside a test's server namespace, and the ``served`` fixture.

Used by tests/e2e/test_serve.py and test_serve_hostile_policy.py: the console script runs under
``ip netns exec`` so the kernel state it writes is that namespace's only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.netns import NetPair
from tests.support.sdnotify import NotifySocket
from tests.support.serve_policy import ACCEPTED, BLOCKED, LATER, PORT, REJECTED, write_policy

NETPOLICY = str(Path(sys.executable).with_name("netpolicy"))


@dataclass
class Served:
    """One ``netpolicy serve`` in ``pair.server``; its policy, mail log, maildir, stderr and
    notify socket live in ``tmp``."""

    pair: NetPair
    tmp: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    notify: NotifySocket | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.policy, self.mail_log, self.stderr = self.tmp / "policy.yml", self.tmp / "mail.log", self.tmp / "serve.err"

    def write_policy(self, blacklist: str = BLOCKED, text: str | None = None) -> None:
        write_policy(self.policy, self.pair.server_v4, self.tmp / "maildir", blacklist, text=text)

    def launch(self, args: Sequence[str], **popen: object) -> None:
        """Run ``args`` (serve, or a wrapper that execs it) in the server namespace; return once
        serve said READY=1: its kernel plan applied, its listeners accepting, its signals handled."""
        if self.notify is not None:  # the one of a serve killed by the test
            self.notify.close()
        self.notify = NotifySocket(self.tmp)
        with open(self.stderr, "ab") as err:
            self.proc = self.pair.server.popen(args, stdout=subprocess.DEVNULL, stderr=err, env=self.notify.env(), **popen)
        self.notify.ready(self.proc, stderr=self.stderr)

    def start(self) -> None:
        self.launch([NETPOLICY, "serve", "-p", str(self.policy), "--mail-log", str(self.mail_log), "--interval", "0.2",
                     "--verbose-connections"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def outcome(self, source: str, timeout: float = 2.0) -> str:
        """What a client from ``source`` sees: 'refused', or the first reply line's code."""
        try:
            sock = self.pair.client.connect((self.pair.server_v4, PORT), source=source, timeout=timeout)
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:  # userland refusal racing the handshake
            return "reset"
        with sock:
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = sock.recv(512)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                return "reset"
        return data[:3].decode() or "closed"

    def log_text(self) -> str:
        return self.mail_log.read_text() if self.mail_log.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr.read_text()


@pytest.fixture
def served(netpair: NetPair, tmp_path: Path) -> Iterator[Served]:
    for address in (BLOCKED, REJECTED, ACCEPTED, LATER):
        netpair.add_client_address(address)
    s = Served(netpair, tmp_path)
    s.write_policy()
    try:
        s.start()
        yield s
    finally:
        s.stop()
