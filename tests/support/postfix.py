"""A private Postfix instance (``postfix -c DIR``): its own main.cf, master.cf, queue, data
directory and log file, optionally started inside a test's network namespace.

Used as the next hop behind ``netpolicy serve`` (tests/e2e/test_postfix_next_hop.py, the soak)
and as a server of its own in bench/bench_smtp.py. Needs root (master binds, daemons run as the
``postfix`` user) and the Debian package postfix. Every daemon runs unchrooted, so nothing from
/etc has to be copied into the queue directory. The work directory is made 0755 outside pytest's
0700 tree, because the daemons must reach their queue as ``postfix``.

Master is started directly (``master -w``) on queue directories made here as postfix-files
lays them out: ``postfix start`` first runs its permission checks over the whole installation
(2.9 s on the test machine). ``master -w`` then takes 1.8-2.4 s on a new queue (its first
start) and 0.03 s when it restarts on one it has run on (the soak's restarts).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Netns
from tests.support.wait import wait_until

BASE_SETTINGS = {
    "compatibility_level": "3.6",
    "myhostname": "hop.example.test",
    "mydestination": "",
    "relay_domains": "example.test",
    "inet_protocols": "ipv4",
    "default_transport": "discard:",
    "relay_transport": "discard:",
    "local_transport": "discard:",
    "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
    "mynetworks": "127.0.0.0/8",
    "smtpd_peername_lookup": "no",
    "smtpd_client_connection_count_limit": "0",
    "alias_maps": "",
    "alias_database": "",
}
# postfix-files: the queue's subdirectories, their group (else root) and mode; owner postfix.
QUEUE_DIRECTORIES = {
    **dict.fromkeys(("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
                     "private", "saved", "trace"), (None, 0o700)),
    "maildrop": ("postdrop", 0o730),
    "public": ("postdrop", 0o710),
}
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"  # Debian's daemon_directory, where master lives


def master_cf(address: str, port: int) -> str:
    """Debian's master.cf services, unchrooted, with smtpd on ``address:port`` and without the
    pipe transports (their argument lines are continuations this does not carry over)."""
    out = [f"{address}:{port} inet n - n - - smtpd\n"]
    with open("/etc/postfix/master.cf") as src:
        for line in src:
            fields = line.split()
            if line[:1].isalpha() and len(fields) == 8 and fields[1] != "inet" and fields[7] != "pipe":
                fields[4] = "n"
                out.append(" ".join(fields) + "\n")
    return "".join(out)


@dataclass
class Postfix:
    """One private Postfix; ``settings`` go into main.cf on top of ``BASE_SETTINGS``."""

    workdir: Path
    port: int
    address: str = "127.0.0.1"
    ns: Netns | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conf, self.queue, self.data = self.workdir / "etc", self.workdir / "queue", self.workdir / "data"
        self.log = self.workdir / "postfix.log"
        for path in (self.conf, self.queue, self.data):
            path.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix")  # master's lock files live there
        for name, (group, mode) in QUEUE_DIRECTORIES.items():
            path = self.queue / name
            path.mkdir(exist_ok=True)
            os.chown(path, pwd.getpwnam("postfix").pw_uid, grp.getgrnam(group).gr_gid if group else 0)
            path.chmod(mode)
        (self.queue / "pid").mkdir(exist_ok=True)
        self.write_config()

    def write_config(self) -> None:
        settings = {
            **BASE_SETTINGS,
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "inet_interfaces": self.address,
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.workdir),
            **self.settings,
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.conf / "master.cf").write_text(master_cf(self.address, self.port))

    def _postfix(self, *args: str, check: bool = True, program: str = "postfix") -> subprocess.CompletedProcess[str]:
        command = [program, "-c", str(self.conf), *args]
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        if self.ns is not None:
            command = ["ip", "netns", "exec", self.ns.name, *command]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {done.stderr.strip()}; see {self.log}")
        return done

    def start(self) -> None:
        """Start master and wait until smtpd greets on its port."""
        self._postfix("-w", program=os.path.join(DAEMON_DIRECTORY, "master"))
        self.wait_greeting()

    def wait_greeting(self, timeout: float = 20.0) -> None:
        def greets() -> bool:
            with self._connect() as s:
                return s.recv(512).startswith(b"220")

        wait_until(greets, f"Postfix to greet on {self.address}:{self.port}", timeout=timeout, ignoring=(OSError,))

    def _connect(self) -> socket.socket:
        sock: socket.socket
        if self.ns is not None:
            sock = self.ns.connect((self.address, self.port), timeout=2)
        else:
            sock = socket.create_connection((self.address, self.port), timeout=2)
        return sock

    @property
    def master(self) -> int | None:
        """The running master's pid, or None."""
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def processes(self) -> list[int]:
        """Master and every process under it."""
        master = self.master
        return [] if master is None else _tree(master)

    def daemons(self, name: str) -> list[int]:
        """Pids of master's children running ``name`` (``smtpd``, ``cleanup``...)."""
        found = []
        for pid in self.processes():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
        return found

    def stop(self) -> None:
        master = self.master
        if master is None:
            return
        self._postfix("stop", check=False)
        wait_until(lambda: not _alive(master), "Postfix's master process to exit", timeout=15)

    def kill(self) -> None:
        """SIGKILL master and every daemon at once: a crash, not a shutdown."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(p) for p in pids), "the killed Postfix processes to be gone", timeout=10)

    def reload(self) -> None:
        self.write_config()
        self._postfix("reload")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def queue_files(self, queue: str = "hold") -> list[Path]:
        """Complete queue files of one queue (hashed subdirectories included)."""
        root = self.queue / queue
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []

    def postcat(self, path: Path) -> str:
        """The queue file as ``postcat`` shows it: envelope records, DSN attributes, content."""
        done = subprocess.run(["postcat", "-c", str(self.conf), "-e", "-h", "-b", str(path)],
                              capture_output=True, text=True, check=True)
        return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else "X"
    return state != "Z"


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


@contextlib.contextmanager
def postfix_instance(port: int, address: str = "127.0.0.1", ns: Netns | None = None,
                     settings: dict[str, str] | None = None) -> Iterator[Postfix]:
    """A started private Postfix, stopped (killed if it will not stop) and removed afterwards."""
    if not shutil.which("postfix"):
        raise RuntimeError("postfix is not installed (Debian: apt-get install postfix)")
    workdir = Path(tempfile.mkdtemp(prefix="nppostfix"))
    workdir.chmod(0o755)
    instance = Postfix(workdir, port, address, ns, dict(settings or {}))
    try:
        instance.start()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            instance.kill()
            shutil.rmtree(workdir, ignore_errors=True)
