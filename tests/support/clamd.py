"""ClamAV's clamd for the tests, with one local signature and no downloaded databases.

clamd starts from any directory holding a signature file, so the tests need neither freshclam nor
the network: ``eicar.ndb`` holds a body signature for the EICAR test string named
``Eicar-Signature`` (clamd reports signatures of unofficial databases as
``Eicar-Signature.UNOFFICIAL``). With that one signature clamd is up in about a second; it runs
in the foreground as the ``clamav`` user on a loopback address and port of the test's choosing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.wait import wait_until

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Signature"


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class Clamd:
    directory: Path
    address: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        clamd = shutil.which("clamd") or "/usr/sbin/clamd"
        self.port = self.port or free_port(self.address)
        database = self.directory / "db"
        database.mkdir(parents=True)
        (database / "eicar.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        config = self.directory / "clamd.conf"
        config.write_text(
            "Foreground yes\n"
            f"DatabaseDirectory {database}\n"
            f"TCPAddr {self.address}\nTCPSocket {self.port}\n"
            f"LogFile {self.directory / 'clamd.log'}\n"
            "User clamav\n"
        )
        for path in (self.directory, database, *database.iterdir()):
            shutil.chown(path, "clamav", "clamav")
        with open(self.directory / "clamd.out", "wb") as out:
            self.proc = subprocess.Popen([clamd, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.ping(), "clamd answering PING", timeout=60)
        if proc.poll() is not None:
            raise RuntimeError(f"clamd exited: {(self.directory / 'clamd.out').read_text()[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
