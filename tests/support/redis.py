"""A real redis-server (Debian's) for the shared-counter tests: started, stopped, frozen, restarted.

Each server has an address of its own on loopback (127.63.x.y) and a free port, a directory of
its own, and no persistence (``--save '' --appendonly no``): a restart comes back empty, which is
one of the faults under test. ``kill()`` and ``start()`` again keep the address and port, as a
store restarted by systemd would; ``freeze()`` (SIGSTOP) makes it a store that accepts and never
answers, the slow store. ``tls``: a TLS-only server (rediss://). ``ns``: run it inside a
namespace (a test's shared "store" host).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
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


def _pings(address: str, port: int, tls: bool) -> bool:
    """It answers (PONG, or NOAUTH when it wants a password)."""
    with socket.create_connection((address, port), timeout=0.5) as plain:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # up, not trusted: the test's client checks
        with (context.wrap_socket(plain) if tls else plain) as sock:
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
    def tls(self) -> bool:
        return "--tls-cert-file" in self.options

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://{self.address}:{self.port}/0?ssl_ca_certs={os.path.join(self.directory, 'store.pem')}"
        return f"redis://{self.address}:{self.port}/0"

    def start(self) -> None:
        """Start it (again) on the same address and port; returns once it answers PING."""
        port = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        argv = [REDIS_SERVER, "--bind", self.address, *port, "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", os.path.join(self.directory, "redis.log"), *self.options]
        if self.ns is None:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: _pings(self.address, self.port, self.tls), "redis-server answering PING", ignoring=(OSError,))
        else:
            ns = self.ns
            self.process = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: ns.call(lambda: _pings(self.address, self.port, self.tls)), "redis-server answering PING",
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


def _certificate(directory: str, address: str) -> tuple[str, ...]:
    """A self-signed certificate for ``address``: the options of a TLS-only server."""
    cert, key = os.path.join(directory, "store.pem"), os.path.join(directory, "store.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=store.example.test",
                    "-addext", f"subjectAltName=IP:{address}"], check=True, capture_output=True)
    return ("--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no")


@contextmanager
def running_redis(address: str | None = None, ns: Netns | None = None, options: tuple[str, ...] = (),
                  tls: bool = False) -> Iterator[RedisServer]:
    """A started redis-server, killed and its directory removed on exit, even on failure.
    ``tls``: on TLS only, with a self-signed certificate its ``url`` names as the CA."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make sysdeps: redis-server)")
    if address is None:
        address = f"127.63.{os.getpid() % 250 + 1}.{time.monotonic_ns() % 250 + 1}"
    port = _free_port(address) if ns is None else ns.call(lambda: _free_port(address))
    directory = tempfile.mkdtemp(prefix="np-redis-")
    if tls:
        options = (*options, *_certificate(directory, address))
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


@dataclass
class SentinelSetup:
    """A master, its replica and one sentinel watching them (quorum 1), each on its own address."""

    master: RedisServer
    replica: RedisServer
    address: str
    port: int
    directory: str
    service: str = "npmaster"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.address}:{self.port}/{self.service}/0"

    def ask(self, *command: str) -> str:
        """One command to the sentinel through redis-cli: its raw output."""
        return subprocess.run(["redis-cli", "-h", self.address, "-p", str(self.port), *command],
                              capture_output=True, text=True, timeout=5).stdout

    def start(self) -> None:
        config = os.path.join(self.directory, "sentinel.conf")
        with open(config, "w") as out:  # the sentinel rewrites its file: one of its own
            out.write(f"port {self.port}\nbind {self.address}\nprotected-mode no\ndaemonize no\n"
                      f"dir {self.directory}\nlogfile {os.path.join(self.directory, 'sentinel.log')}\n"
                      f"sentinel monitor {self.service} {self.master.address} {self.master.port} 1\n"
                      f"sentinel down-after-milliseconds {self.service} 1000\n"
                      f"sentinel failover-timeout {self.service} 10000\n")
        self.process = subprocess.Popen([REDIS_SERVER, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: f"{self.replica.address}" in self.ask("SENTINEL", "replicas", self.service),
                   "the sentinel to know the master and its replica", timeout=15, ignoring=(OSError, subprocess.SubprocessError))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _replicating(replica: RedisServer) -> bool:
    found = subprocess.run(["redis-cli", "-h", replica.address, "-p", str(replica.port), "INFO", "replication"],
                           capture_output=True, text=True, timeout=5).stdout
    return "master_link_status:up" in found


@contextmanager
def running_sentinel() -> Iterator[SentinelSetup]:
    """A master, a replica of it and a sentinel, all on loopback addresses of their own; killed and
    removed on exit. The replica announces its own address: the master would otherwise report the
    connection's source, 127.0.0.1, where the replica does not listen."""
    # Redis 7 waits repl-diskless-sync-delay (5 s) for more replicas before the first sync.
    with running_redis(options=("--repl-diskless-sync-delay", "0")) as master:
        base = master.address.rpartition(".")[0]
        replica_address = f"{base}.{int(master.address.rpartition('.')[2]) % 250 + 2}"
        options = ("--replicaof", master.address, str(master.port), "--replica-announce-ip", replica_address)
        with running_redis(replica_address, options=options) as replica:
            wait_until(lambda: _replicating(replica), "the replica to follow the master", timeout=15, ignoring=(OSError,))
            sentinel_address = f"{base}.{int(replica_address.rpartition('.')[2]) % 250 + 2}"
            directory = tempfile.mkdtemp(prefix="np-sentinel-")
            setup = SentinelSetup(master, replica, sentinel_address, _free_port(sentinel_address), directory)
            try:
                setup.start()
                yield setup
            finally:
                setup.stop()
                shutil.rmtree(directory, ignore_errors=True)
