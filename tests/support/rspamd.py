"""rspamd from Debian for the tests: the stock configuration with a private local.d/override.d.

Started once per test session (the ``rspamd`` fixture): the first start of a fresh database
directory builds rspamd's symbol cache (12 s here, 20-40 s on a loaded machine), later requests
answer in milliseconds. It runs as ``_rspamd`` with its own pid, log and database directories
under a temporary directory, its workers on loopback ports chosen free:

- the normal worker (``url``): what netpolicy asks with ``POST /checkv2``;
- the controller: ``scanned()`` reads its ``/stat`` counter, so a test can prove a message never
  reached rspamd;
- the proxy worker in milter mode, scanning itself (only with ``milter=True``: Postfix's peer in
  the bench).

Offline: every DNS lookup goes to the tests' DNS server (``dns``), which serves the test zones
and refuses the rest. The DNS-list modules (``rbl``, ``asn``) are off: each list would be one
REFUSED answer per message, nothing a test looks at. The antivirus module asks ``clamd`` when
one is given (its symbol ``CLAM_VIRUS``, netpolicy's default ``virus_symbols``).

SIGTERM to rspamd's main process stops its workers; after a SIGKILL the workers survive, so
``stop`` ends the whole process group rspamd was started in.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.clamd import Clamd, free_port
from tests.support.dns_server import DnsServer
from tests.support.wait import wait_until

RSPAMD = "/usr/bin/rspamd"

# The tests' one rule of their own: a message's X-Netpolicy-Test-Score header adds that much to
# its score, so a test can ask for each action at the stock thresholds (greylist 4, add header
# 6, reject 15) with an otherwise ordinary message.
TEST_RULE = """
rspamd_config:register_symbol({
  name = 'NETPOLICY_TEST_SCORE',
  score = 1.0,
  group = 'netpolicy_test',
  callback = function(task)
    local value = task:get_header('X-Netpolicy-Test-Score')
    if value then
      return true, tonumber(value) or 0
    end
    return false
  end,
})
"""


@dataclass
class Rspamd:
    directory: Path
    address: str
    dns: tuple[str, int]
    clamd: tuple[str, int] | None = None
    milter: bool = False
    workers: int = 1
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.ports['normal']}"

    @property
    def milter_address(self) -> str:
        return f"inet:{self.address}:{self.ports['proxy']}"

    def _configure(self) -> None:
        for name in ("normal", "controller", "proxy"):
            self.ports.setdefault(name, free_port(self.address))
        local, override = self.directory / "local.d", self.directory / "override.d"
        for sub in (local, override, self.directory / "db", self.directory / "run", self.directory / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        for name in ("db", "run", "log"):
            shutil.chown(self.directory / name, "_rspamd", "_rspamd")
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "{self.address}:{self.ports["normal"]}";\ncount = {self.workers};\n')
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "{self.address}:{self.ports["controller"]}";\ncount = 1;\nsecure_ip = "127.0.0.0/8";\n')
        proxy = (f'bind_socket = "{self.address}:{self.ports["proxy"]}";\ncount = {self.workers};\n'
                 'milter = yes;\ntimeout = 120s;\nupstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n')
        (override / "worker-proxy.inc").write_text(proxy if self.milter else "enabled = false;\n")
        dns_address, dns_port = self.dns
        (local / "options.inc").write_text(
            f'dns {{\n  nameserver = ["{dns_address}:{dns_port}"];\n  timeout = 1s;\n  retransmits = 1;\n}}\n')
        for module in ("rbl", "asn"):
            (local / f"{module}.conf").write_text("enabled = false;\n")
        (local / "rspamd.lua").write_text(TEST_RULE)
        if self.clamd is not None:
            clamd_address, clamd_port = self.clamd
            (local / "antivirus.conf").write_text(
                'clamav {\n  type = "clamav";\n  symbol = "CLAM_VIRUS";\n'
                f'  servers = "{clamd_address}:{clamd_port}";\n  scan_mime_parts = true;\n  timeout = 5s;\n  retransmits = 0;\n}}\n')

    def start(self, timeout: float = 120.0) -> None:
        self._configure()
        variables = {"LOCAL_CONFDIR": self.directory, "DBDIR": self.directory / "db", "RUNDIR": self.directory / "run",
                     "LOGDIR": self.directory / "log"}
        args = [RSPAMD, "-f", "-c", "/etc/rspamd/rspamd.conf", "-u", "_rspamd", "-g", "_rspamd"]
        for name, value in variables.items():
            args += ["--var", f"{name}={value}"]
        with open(self.directory / "rspamd.out", "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self._ping(), "rspamd answering /ping", timeout=timeout)
        if proc.poll() is not None:
            raise RuntimeError(f"rspamd exited: {(self.directory / 'rspamd.out').read_text()[-2000:]}")

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                return bool(response.read().strip() == b"pong")
        except OSError:
            return False

    def scanned(self) -> int:
        """Messages rspamd has scanned since it started (its controller's /stat)."""
        with urllib.request.urlopen(f"http://{self.address}:{self.ports['controller']}/stat", timeout=5) as response:
            return int(json.load(response)["scanned"])

    def log_text(self) -> str:
        path = self.directory / "log" / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # workers left behind by a main process that did not stop them
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


def scratch_directory(prefix: str) -> Path:
    """A directory the daemons' own users can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Scanning:
    """The session's scanning stack: the DNS server (zones loaded by the tests), clamd, rspamd."""

    dns: DnsServer
    clamd: Clamd
    rspamd: Rspamd


def loopback(index: int) -> str:
    """A loopback address of this test run's own (another run may use the same ports)."""
    return f"127.{20 + index}.{os.getpid() % 250 + 1}.1"


@pytest.fixture(scope="session")
def scanning() -> Iterator[Scanning]:
    if os.geteuid() != 0:
        pytest.skip("rspamd and clamd are started as root and drop to their own users")
    for tool in (RSPAMD, shutil.which("clamd") or "/usr/sbin/clamd"):
        if not os.path.exists(tool):
            pytest.skip(f"{tool} is not installed (make sysdeps)")
    directory = scratch_directory("np-scan-")
    dns = DnsServer(loopback(0))
    clamd = Clamd(directory / "clamd", loopback(1))
    rspamd = Rspamd(directory / "rspamd", loopback(2), (dns.address, 0))
    try:
        dns.start()
        rspamd.dns = (dns.address, dns.port)
        clamd.directory.mkdir()
        clamd.start()
        rspamd.clamd = (clamd.address, clamd.port)
        rspamd.start()
        yield Scanning(dns, clamd, rspamd)
    finally:
        rspamd.stop()
        clamd.stop()
        dns.stop()
        shutil.rmtree(directory, ignore_errors=True)


FAULTS = ("down", "slow", "http-500", "garbage", "cut", "antivirus-failed")


class FakeRspamd:
    """An HTTP server on loopback answering ``/checkv2`` with one of rspamd's failures (``FAULTS``):
    ``down`` listens nowhere, ``slow`` reads the request and never answers, ``http-500``
    answers 500, ``garbage`` a 200 that is not JSON, ``cut`` closes after half its answer,
    ``antivirus-failed`` rspamd's clean answer but its antivirus rule could not reach clamd; and
    ``clean``, no fault: rspamd's answer for a clean message. ``requests`` holds each request
    read (its head and its body)."""

    def __init__(self, fault: str, address: str = "127.0.0.1") -> None:
        self.fault = fault
        self.address = address
        self.port = free_port(address)
        self.requests: list[tuple[bytes, bytes]] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def __aenter__(self) -> FakeRspamd:
        if self.fault != "down":
            self._server = await asyncio.start_server(self._answer, self.address, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            self.requests.append((head, await reader.readexactly(length)))
            if self.fault == "slow":
                await reader.read()  # the fault under test: no answer until the client gives up
                return
            writer.write(self._response())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _response(self) -> bytes:
        if self.fault == "http-500":
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        if self.fault == "garbage":
            body = b"<html>not rspamd</html>"
        elif self.fault == "antivirus-failed":
            body = json.dumps({"action": "no action", "score": 0.0, "symbols": {
                "CLAM_VIRUS_FAIL": {"name": "CLAM_VIRUS_FAIL", "score": 0.0, "options": ["failed to scan, maximum retransmits exceed"]}}}).encode()
        elif self.fault == "clean":
            body = json.dumps({"action": "no action", "score": 0.0, "symbols": {}}).encode()
        else:  # cut: half of a longer answer, then the connection closes
            body = json.dumps({"action": "no action", "score": 0.0, "symbols": {}}).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(body)) + body[: len(body) // 2]
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
