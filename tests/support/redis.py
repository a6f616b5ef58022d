"""A real redis-server (Debian's) for the shared-counter tests: started, stopped, frozen, restarted.

Each server has an address of its own on loopback (127.63.x.y) and a free port, a directory of
its own, and no persistence (``--save '' --appendonly no``): a restart comes back empty, which is
one of the faults under test. ``kill()`` and ``start()`` again keep the address and port, as a
store restarted by systemd would; ``freeze()`` (SIGSTOP) makes it a store that accepts and never
answers, the slow store. ``ns``: run it inside a namespace (a test's shared "store" host).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from tests.support.netns import Netns
from tests.support.wait import wait_until

REDIS_SERVER = "/usr/bin/redis-server"


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(address: str, port: int) -> bool:
    """It answers (PONG, or NOAUTH when it wants a password)."""
    with socket.create_connection((address, port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class RedisServer:
    address: str
    port: int
    directory: str
    ns: Netns | None = None
    options: tuple[str, ...] = ()  # more redis-server options, e.g. ("--requirepass", "secret")
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def start(self) -> None:
        """Start it (again) on the same address and port; returns once it answers PING."""
        argv = [REDIS_SERVER, "--bind", self.address, "--port", str(self.port), "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", os.path.join(self.directory, "redis.log"), *self.options]
        if self.ns is None:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: _pings(self.address, self.port), "redis-server answering PING", ignoring=(OSError,))
        else:
            ns = self.ns
            self.process = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: ns.call(lambda: _pings(self.address, self.port)), "redis-server answering PING",
                       ignoring=(OSError,))

    def kill(self) -> None:
        """The store dies (SIGKILL): nothing it held survives a ``start()``."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a frozen server must be able to die
            process.kill()
            process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """The store stops answering but keeps its connections (SIGSTOP): a slow store."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def running_redis(address: str | None = None, ns: Netns | None = None, options: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """A started redis-server, killed and its directory removed on exit, even on failure."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make sysdeps: redis-server)")
    if address is None:
        address = f"127.63.{os.getpid() % 250 + 1}.{time.monotonic_ns() % 250 + 1}"
    port = _free_port(address) if ns is None else ns.call(lambda: _free_port(address))
    directory = tempfile.mkdtemp(prefix="np-redis-")
    server = RedisServer(address, port, directory, ns, options)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server
