"""``netpolicy serve`` run for real inside a test's server namespace, and the ``served`` fixture.

Used by tests/e2e/test_serve.py and test_serve_hostile_policy.py: the console script runs under
``ip netns exec`` so the kernel state it writes is that namespace's only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import NetPair
from tests.support.serve_policy import ACCEPTED, BLOCKED, LATER, PORT, REJECTED, write_policy

NETPOLICY = str(Path(sys.executable).with_name("netpolicy"))
@dataclass
class Served:
    pair: NetPair
    policy: Path
    mail_log: Path
    proc: subprocess.Popen[bytes]
    stderr: Path
    tmp: Path

    def write_policy(self, blacklist: str = BLOCKED, text: str | None = None) -> None:
        write_policy(self.policy, self.pair.server_v4, self.tmp / "maildir", blacklist, text=text)

    def start(self) -> None:
        self.proc = start_serve(self)

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


def start_serve(s: Served) -> subprocess.Popen[bytes]:
    err = open(s.stderr, "ab")
    proc = s.pair.server.popen(
        [NETPOLICY, "serve", "-p", str(s.policy), "--mail-log", str(s.mail_log), "--interval", "0.2", "--verbose-connections"],
        stdout=subprocess.DEVNULL, stderr=err,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}: {s.stderr.read_text()}")
        try:
            s.pair.client.connect((s.pair.server_v4, PORT), source=s.pair.client_v4, timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"serve did not start listening: {s.stderr.read_text()}")


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held; fail after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def served(netpair: NetPair, tmp_path: Path) -> Iterator[Served]:
    for address in (BLOCKED, REJECTED, ACCEPTED, LATER):
        netpair.add_client_address(address)
    s = Served(netpair, tmp_path / "policy.yml", tmp_path / "mail.log", None, tmp_path / "serve.err", tmp_path)  # type: ignore[arg-type]
    s.write_policy()
    s.start()
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.terminate()
            try:
                s.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.proc.kill()
