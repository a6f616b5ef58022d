"""``netpolicy serve --workers N``: N SMTP worker processes and the one process that supervises them.

The supervisor owns everything there is one of on a host: the kernel plan and its reconciler, the
NFLOG reader, the file watcher, the follower of the state store's refusals and the fleet
heartbeat. It serves no SMTP. Each worker is a fresh interpreter (``netpolicy serve-worker``,
hidden) with its own SO_REUSEPORT listening sockets, so the kernel spreads the SYNs over them; a
fork of a process that already runs an event loop would inherit that loop, its threads and its
sockets in whatever state they were.

Control channel: one socketpair per worker (its end passed as an inherited fd), one JSON object a
line. The supervisor sends ``install`` (load the policy file and run it) and ``reopen`` (the mail
log, after rotation); a worker sends ``ready`` and ``installed`` (the generation it now runs),
``learned`` (why each refusal it learned was refused, for the supervisor's NFLOG lines) and every
``STATS_EVERY`` seconds ``stats`` (its listeners' counters, which the supervisor sums for its
metrics and ``status``). A worker whose channel closes stops: its supervisor is gone.

Reload: the supervisor validates and compiles; a broken policy changes nothing anywhere.
Otherwise it applies the kernel diff, then tells every worker to install. Each worker loads the
file itself (in a thread, as serve does): a million parsed entries are not worth sending over a
socket. A worker that reports another generation (the file changed in between) is logged and
the supervisor reloads once more.

Shared limits need the state store: the workers are separate processes, so ``max_concurrency``
and the other per-client limits only hold across them through it, and serve refuses more than one
worker without a ``state`` block. A worker's promotions and learned refusals are published to
the store like another gateway's, and the supervisor's follower applies them to the kernel.

Mail log: one file; each worker hands out ids ``first_id + k * N``, so ids never collide. A
restarted worker starts ``ID_SLACK`` steps past the last id its predecessor reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import uvloop

from netpolicy.daemon.serve import Daemon, Prepared, ServeOptions, configure_logging
from netpolicy.kernel.learning import Deadlines, Learning
from netpolicy.kernel.promotion import PromotionDecision
from netpolicy.model import Policy
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.services import ListenerStats

log = logging.getLogger("netpolicy.daemon.workers")

STATS_EVERY = 1.0  # seconds between a worker's stats reports
RESTART_DELAY = 1.0  # seconds before a worker that ended is started again
START_TIMEOUT = 120.0  # seconds a worker may take to load the policy and listen (a 1M-entry policy: ~20 s)
STOP_TIMEOUT = 30.0  # seconds a worker has to end after SIGTERM (its sessions get 10 s, then 421) before SIGKILL
ID_SLACK = 100_000  # ids a worker could hand out between two reports, far more than it can in a second

Message = dict[str, Any]


# -- the control protocol --------------------------------------------------------------------


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """One line of the channel; None for anything that is not an object with an ``op``."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and isinstance(message.get("op"), str) else None


def stats_json(stats: ListenerStats) -> Message:
    """``stats`` as JSON: counters keyed by tuples become lists ``[*key, n]``."""
    out: Message = {}
    for f in fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, Counter):
            out[f.name] = [[*(key if isinstance(key, tuple) else (key,)), n] for key, n in value.items()]
        else:
            out[f.name] = value
    return out


def add_stats(total: ListenerStats, data: Mapping[str, Any]) -> None:
    """Add one worker's ``stats_json`` to ``total``; what does not parse is left out."""
    for f in fields(total):
        value, got = getattr(total, f.name), data.get(f.name)
        if isinstance(value, Counter) and isinstance(got, list):
            pairs = "tuple[str, str]" in str(f.type)  # keyed by (group, behaviour), not by one name
            for item in got:
                if (isinstance(item, list) and len(item) == (3 if pairs else 2) and type(item[-1]) is int
                        and all(isinstance(k, str) for k in item[:-1])):
                    value[tuple(item[:-1]) if pairs else item[0]] += item[-1]
        elif type(value) is int and type(got) is int:
            setattr(total, f.name, value + got)


def add_counts(total: Counter[str], data: object) -> None:
    """Add a ``{name: n}`` report to ``total``."""
    if isinstance(data, dict):
        for name, n in data.items():
            if isinstance(name, str) and type(n) is int:
                total[name] += n


@dataclass
class Totals:
    """Workers' ``stats`` reports summed: what the supervisor's metrics show."""

    listeners: dict[str, ListenerStats] = field(default_factory=dict)
    promotions: Counter[str] = field(default_factory=Counter)
    learned: Counter[str] = field(default_factory=Counter)
    learn_skipped: Counter[str] = field(default_factory=Counter)

    def add(self, report: Mapping[str, Any], *, open_now: bool = True) -> None:
        """Add one report; ``open_now=False`` for a worker that has ended (its connections are gone)."""
        listeners = report.get("listeners")
        if isinstance(listeners, dict):
            for name, data in listeners.items():
                if isinstance(name, str) and isinstance(data, dict):
                    add_stats(self.listeners.setdefault(name, ListenerStats()), data if open_now else {**data, "open_connections": 0})
        for key in ("promotions", "learned", "learn_skipped"):
            add_counts(getattr(self, key), report.get(key))

    def report(self) -> Message:
        """The totals as one report (``add`` reads it back)."""
        return {"listeners": {name: stats_json(stats) for name, stats in self.listeners.items()},
                "promotions": dict(self.promotions), "learned": dict(self.learned), "learn_skipped": dict(self.learn_skipped)}

    def connections(self) -> int:
        return sum(sum(stats.connections.values()) for stats in self.listeners.values())


def default_runtime_file() -> str:
    """Where serve lists its workers for ``status``: systemd's RuntimeDirectory, /run/netpolicy
    for root, else the user's runtime directory (``make run``)."""
    directory = os.environ.get("RUNTIME_DIRECTORY")
    if not directory:
        if os.geteuid() == 0:
            directory = "/run/netpolicy"
        else:
            base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
            directory = os.path.join(base, f"netpolicy-{os.geteuid()}")
    return os.path.join(directory, "serve.json")


def read_runtime(path: str) -> Message | None:
    """The runtime file of a serve that is running; None when there is none (or it is stale)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        os.kill(int(data["pid"]), 0)
    except PermissionError:  # serve runs as another user: it is there
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("workers"), list) else None


# -- the worker side ---------------------------------------------------------------------------


class _CountingLog(MailLog):
    """The mail log, remembering the last id handed out (reported, for a successor's first id)."""

    last_id = 0

    def next_id(self) -> int:
        self.last_id = super().next_id()
        return self.last_id


class _Publishing:
    """The learner's sink in a worker: the kernel is the supervisor's, so what is learned is
    published to the store (the supervisor's follower applies it)."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self.worker, self.loop = worker, loop

    def learn(self, batch: list[Learning]) -> list[Learning]:
        self.loop.call_soon_threadsafe(self.worker.learned, batch)
        return batch


class Worker(Daemon):
    """One SMTP process: serve's listeners, without the kernel, driven over ``control``."""

    reuse_port = True

    def __init__(self, options: ServeOptions, control: socket.socket, slot: int, first_id: int, id_step: int,
                 kernel: bool) -> None:
        self.ids = _CountingLog(options.mail_log, first_id=first_id, id_step=id_step)
        super().__init__(options, self.ids)
        self.slot = slot
        self.kernel = kernel  # the supervisor enforces in a kernel: promote and learn
        self._control = control
        self._writer: asyncio.StreamWriter | None = None

    def _select_backend(self) -> None:
        """The supervisor's business."""

    def _enforces(self) -> bool:
        return self.kernel

    def _loops(self) -> list[asyncio.Task[None]]:
        loop = asyncio.get_running_loop()
        return [self._supervise("control channel", self._listen),
                self._supervise("learned refusals", lambda: self.learner.run(_Publishing(self, loop))),
                self._supervise("store flush", self._heartbeat)]  # _announce is the supervisor's: only the flush

    def _on_sighup(self) -> None:
        """Reloads come from the supervisor; a stray SIGHUP only reopens the mail log."""
        self.maillog.reopen()

    async def _announce(self) -> None:
        """The supervisor announces the gateway."""

    async def _promote(self, promotion: PromotionDecision, kind: str) -> None:
        self._promoted(promotion, kind, "through the state store")
        await self.shared.publish("promoted", promotion.listener, promotion.address, promotion.seconds, self.view.generation)

    def learned(self, batch: list[Learning]) -> None:
        """Publish ``batch``, and tell the supervisor why each was refused: its NFLOG reader logs
        a kernel refusal with the decision's sender group and match, which the address alone
        (without the DNS answers) would not give."""
        self.shared.publish_learned(batch)
        notes = [[item.listener, item.address, item.seconds, *why] for item in batch
                 if (why := self.learner.why(item.listener, item.address)) is not None]
        if notes:
            self._send({"op": "learned", "notes": notes})

    def _send(self, message: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    async def _listen(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._control)
        self._send({"op": "ready", "generation": self.view.generation})
        reporter = asyncio.ensure_future(self._report())
        try:
            while line := await reader.readline():
                message = decode(line)
                if message is None:
                    log.warning("worker %d: unreadable control message %r", self.slot, line[:80])
                elif message["op"] == "install":
                    self.kernel = bool(message.get("kernel", self.kernel))
                    self._spawn(self._install_for_supervisor())
                elif message["op"] == "reopen":
                    self.maillog.reopen()
        finally:
            reporter.cancel()
            self._stop.set()  # the supervisor is gone (or stopping): so is this worker

    async def _install_for_supervisor(self) -> None:
        await self.reload("supervisor")  # a failure is logged here; the supervisor sees the generation
        self._send({"op": "installed", "generation": self.view.generation})

    async def _report(self) -> None:
        while True:
            self._send({"op": "stats", "last_id": self.ids.last_id,
                        "listeners": {name: stats_json(stats) for name, stats in self.view.listeners.items()},
                        "promotions": self.view.promotions, "learned": dict(self.learner.learned),
                        "learn_skipped": dict(self.learner.skipped)})
            await asyncio.sleep(STATS_EVERY)


def run_worker(options: ServeOptions, control: int, slot: int, first_id: int, id_step: int, kernel: bool) -> int:
    """The hidden ``serve-worker`` command."""
    configure_logging(f"worker {slot} ")
    sock = socket.socket(fileno=control)
    return uvloop.run(Worker(options, sock, slot, first_id, id_step, kernel).run())


# -- the supervisor side -----------------------------------------------------------------------


@dataclass
class _Slot:
    """One worker place: the process in it now, and what its predecessors counted."""

    slot: int
    first_id: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    generation: str = ""
    started: float = 0.0
    restarts: int = 0
    last_id: int = 0
    report: Message = field(default_factory=dict)  # the last stats report of the process in it
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    installed: asyncio.Future[str | None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def connections(self) -> int:
        totals = Totals()
        totals.add(self.report)
        return totals.connections()


class WorkerStartError(Exception):
    """A worker ended before it served: serve exits 1."""


class Supervisor(Daemon):
    """serve's kernel, watcher and fleet work, with ``options.workers`` SMTP workers."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__(options)
        self.slots = [_Slot(i, i + 1) for i in range(options.workers)]
        self.view.worker_restarts = 0
        self.runtime_file = options.runtime_file or default_runtime_file()
        self._keepers: list[asyncio.Task[None]] = []
        self._retired = Totals()  # what workers that ended had counted
        self._notes = Deadlines()  # why the workers' learned refusals were refused, for the NFLOG lines
        self._stopping = False
        self._started = False  # every worker was ready once: from now on one that ends is started again
        self._runtime_written = False  # kept current once the first write worked
        self._failed = asyncio.Event()  # a worker ended before it was ready, at start
        self._target = ""  # the generation the workers are to run
        self._realigning = False

    def _refuses(self, policy: Policy) -> str | None:
        if policy.state is None:
            return (f"serve --workers {self.options.workers} needs a state block (SPEC.md section 10): "
                    "the workers share the per-client limits through it")
        return None

    async def run(self) -> int:
        try:
            return await super().run()
        except WorkerStartError as exc:
            log.error("%s", exc)
            return 1
        finally:
            await self._stop_serving()
            if self._runtime_written:
                with contextlib.suppress(OSError):
                    os.unlink(self.runtime_file)

    def _loops(self) -> list[asyncio.Task[None]]:
        loops = super()._loops()
        if self._runtime_written:
            loops.append(self._supervise("runtime file", self._write_runtime))
        return loops

    def _on_sighup(self) -> None:
        self._broadcast({"op": "reopen"})
        super()._on_sighup()

    def _on_sigusr1(self) -> None:
        self._broadcast({"op": "reopen"})
        super()._on_sigusr1()

    # -- installing ----------------------------------------------------------------------------

    async def _serve(self, prepared: Prepared) -> None:
        """Start the workers, or have every one install the generation the kernel now has."""
        if prepared.plan.generation != self._target:
            self._notes.clear()  # the kernel apply has emptied the learned sets
        self._target = prepared.plan.generation
        if self._started:
            await self._install_workers()
        else:
            await self._start()

    async def _start(self) -> None:
        self._keepers = [asyncio.ensure_future(self._keep(s)) for s in self.slots]
        ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(s.ready.wait() for s in self.slots)))
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._failed.wait())
        done, _ = await asyncio.wait({ready, failed}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if ready not in done:
            raise WorkerStartError("the SMTP workers did not start (see their lines above)")
        self._started = True
        log.info("%d SMTP workers running: pids %s", len(self.slots), ", ".join(str(s.pid) for s in self.slots))
        self._runtime_written = self._publish_runtime(self.runtime())  # status lists them as soon as serve is READY
        self._check_generations()

    async def _install_workers(self) -> None:
        running = [s for s in self.slots if s.writer is not None and s.ready.is_set()]
        loop = asyncio.get_running_loop()
        for s in running:
            s.installed = loop.create_future()
            self._send(s, {"op": "install", "kernel": self._enforces()})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT):
                for s in running:
                    if s.installed is not None:
                        await s.installed
        self._check_generations()

    def _off(self) -> list[_Slot]:
        """Running workers on another generation than the kernel's."""
        return [s for s in self.slots if s.ready.is_set() and s.generation != self._target]

    def _check_generations(self) -> None:
        """A worker on another generation than the kernel's: log where each is, reload once more."""
        off = self._off()
        for s in off:
            log.warning("worker %d (pid %s) runs policy generation %s, the kernel %s", s.slot, s.pid, s.generation or "none",
                        self._target)
        if off and not self._realigning:
            self._spawn(self._realign())

    async def _realign(self) -> None:
        """Reload (the file may have changed again); workers still off are told to install once more."""
        self._realigning = True
        try:
            await self.reload("workers on another policy generation")
            if self._off():
                async with self._reload_lock:
                    await self._install_workers()
        finally:
            self._realigning = False

    # -- the workers' processes ----------------------------------------------------------------

    async def _keep(self, s: _Slot) -> None:
        """Run a worker in slot ``s`` until serve stops, starting it again when it ends."""
        while not self._stopping:
            try:
                status = await self._run_worker(s)
            except Exception:
                log.exception("worker %d could not be started", s.slot)
                status = None
            if self._stopping:
                return
            if not self._started:
                self._failed.set()
                return
            s.restarts += 1
            assert self.view.worker_restarts is not None
            self.view.worker_restarts += 1
            log.warning("worker %d (pid %s) ended with status %s; starting it again in %.0f s", s.slot, s.pid, status,
                        RESTART_DELAY)
            s.first_id = max(s.last_id, s.first_id) + len(self.slots) * ID_SLACK
            s.ready.clear()
            await asyncio.sleep(RESTART_DELAY)

    async def _run_worker(self, s: _Slot) -> int | None:
        ours, theirs = socket.socketpair()
        options = self.options
        argv = [sys.executable, "-m", "netpolicy", "serve-worker", "-p", options.policy_path,
                "--control", str(theirs.fileno()), "--slot", str(s.slot), "--first-id", str(s.first_id),
                "--id-step", str(len(self.slots)), "--kernel" if self._enforces() else "--no-kernel"]
        if options.mail_log:
            argv += ["--mail-log", options.mail_log]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # READY=1 is the supervisor's to say
        try:
            s.process = await asyncio.create_subprocess_exec(*argv, pass_fds=[theirs.fileno()], env=env)
        finally:
            theirs.close()
        s.started, s.report, s.generation = time.time(), {}, ""
        reader, s.writer = await asyncio.open_unix_connection(sock=ours)
        try:
            while line := await reader.readline():
                message = decode(line)
                if message is not None:
                    self._received(s, message)
        finally:
            s.writer.close()
            s.writer = None
            if s.installed is not None and not s.installed.done():
                s.installed.set_result(None)
            self._retired.add(s.report, open_now=False)
            s.report = {}
            self._sum()
        return await s.process.wait()

    def _received(self, s: _Slot, message: Message) -> None:
        op = message["op"]
        if op == "stats":
            s.report = message
            if type(message.get("last_id")) is int:
                s.last_id = message["last_id"]
            self._sum()
        elif op in ("ready", "installed"):
            s.generation = str(message.get("generation", ""))
            if op == "ready":
                s.ready.set()
                if self._started:
                    log.info("worker %d (pid %s) running policy generation %s", s.slot, s.pid, s.generation)
                    self._check_generations()
            elif s.installed is not None and not s.installed.done():
                s.installed.set_result(s.generation)
        elif op == "learned" and isinstance(message.get("notes"), list):
            now = time.monotonic()
            for note in message["notes"]:
                match note:
                    case [str() as listener, str() as address, int() as seconds, str() as group, str() as entry]:
                        self._notes.put((listener, address), now + seconds, (group, entry))

    def _why_learned(self, listener: str, address: str) -> tuple[str, str] | None:
        self._notes.expire(time.monotonic())
        return self._notes.note((listener, address))

    def _sum(self) -> None:
        """The metrics' counters: every worker's, those of ended ones included (counters only grow)."""
        totals = Totals()
        totals.add(self._retired.report())
        for s in self.slots:
            totals.add(s.report)
        self.view.listeners = totals.listeners
        self.view.promotions = dict(totals.promotions)
        self.view.learned, self.view.learn_skipped = totals.learned, totals.learn_skipped

    def _send(self, s: _Slot, message: Message) -> None:
        if s.writer is not None and not s.writer.is_closing():
            s.writer.write(encode(message))

    def _broadcast(self, message: Message) -> None:
        for s in self.slots:
            self._send(s, message)

    async def _stop_serving(self) -> None:
        """SIGTERM to every worker (its sessions finish under the listeners' stop), then wait."""
        self._stopping = True
        for s in self.slots:
            if s.process is not None and s.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    s.process.send_signal(signal.SIGTERM)
        for s in self.slots:
            if s.process is not None:
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await s.process.wait()
                except TimeoutError:
                    log.error("worker %d (pid %s) did not stop: killed", s.slot, s.pid)
                    s.process.kill()
                    await s.process.wait()
        await asyncio.gather(*self._keepers, return_exceptions=True)

    # -- what status reads ---------------------------------------------------------------------

    def _workers(self) -> list[Message]:
        return [{"slot": s.slot, "pid": s.pid, "generation": s.generation, "started": s.started, "connections": s.connections(),
                 "restarts": s.restarts, "running": s.ready.is_set()} for s in self.slots]

    def runtime(self) -> Message:
        return {"pid": os.getpid(), "started": self.started, "generation": self.view.generation, "workers": self._workers()}

    def _publish_runtime(self, data: Message) -> bool:
        """Write the runtime file; False (and one warning) when it cannot be written."""
        try:
            os.makedirs(os.path.dirname(self.runtime_file), mode=0o755, exist_ok=True)
            _write_json(self.runtime_file, data)
        except OSError as exc:
            log.warning("no runtime file for status (%s)", exc)
            return False
        return True

    async def _write_runtime(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY)
            if not await asyncio.to_thread(self._publish_runtime, self.runtime()):
                return


def _write_json(path: str, data: Message) -> None:
    """Replace ``path`` in one rename: status never reads half a file."""
    new = f"{path}.{os.getpid()}"
    with open(new, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(new, path)


def serve_workers(options: ServeOptions) -> int:
    configure_logging()
    return uvloop.run(Supervisor(options).run())
