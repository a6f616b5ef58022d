"""``netpolicy serve``: listeners and kernel on one policy generation, in one process.

Start-up: load and validate the policy (a broken one exits 1 before anything is touched), apply
the kernel plan, start every listener, run the reconciler loop, then tell systemd READY=1.

Reload (SIGHUP, or the policy file changing on disk): validate and compile the new policy; a
broken one is logged with file:line and changes nothing. Otherwise the kernel diff is applied
first, then the listeners' HAT indexes are swapped, so the kernel never refuses less than the
listeners expect. Connections already open finish under the policy they started with.
Listeners added, removed or rebound are started and stopped without touching the others.

Loading, compiling and indexing a policy run in a worker thread, so banners never wait for them:
for a 1M-entry sender group they take 5.6 s, 7.4 s and 7.3 s, and an alias bomb expanded on the
loop holds it for 21 s from 272 bytes. Their bound is the loader's (file size, value count, nesting depth, no
aliases). A thread rather than a process: the result (a million parsed entries and their index)
would otherwise have to be pickled back. A reload that fails in any way is logged and leaves the
file watcher running.

One process rather than a privileged reconciler plus an unprivileged SMTP process: the unit runs
it as an unprivileged user with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (see README), which
gives the same containment without an IPC protocol between two halves that must agree on the
policy generation anyway. ``--workers N`` splits it for the cores' sake, not for containment
(netpolicy.daemon.workers: ``Supervisor`` and ``Worker`` are this daemon with the listeners,
respectively the kernel, taken out).

Without CAP_NET_ADMIN (e.g. ``make run`` as a user), serve warns and runs userland-only: the
listeners refuse TCPREFUSE hosts themselves (handshake, then RST).

A TCPREFUSE the listeners decide on DNS answers is learned into the kernel for the answers' TTL
(netpolicy.kernel.learning); a reload that changes the policy forgets what was learned.

With a state store, promotions and learned refusals are shared with the other gateways
(netpolicy.daemon.shared_refusals) and serve announces itself to the fleet view
(netpolicy.daemon.fleet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import uvloop

from netpolicy.daemon.fleet import HEARTBEAT, Gateway, announce, withdraw
from netpolicy.daemon.metrics import DaemonView, Metrics
from netpolicy.daemon.sdnotify import notify
from netpolicy.daemon.shared_refusals import SharedRefusals
from netpolicy.kernel import select_backend
from netpolicy.kernel.base import Backend, has_net_admin
from netpolicy.kernel.layout import listener_id
from netpolicy.kernel.learning import Learner, learn_seconds
from netpolicy.kernel.nflog import NflogReader
from netpolicy.kernel.promotion import WINDOW as OFFENCE_WINDOW
from netpolicy.kernel.promotion import OffenceTracker, PromotionDecision
from netpolicy.kernel.reconciler import Reconciler
from netpolicy.kernel.values import KernelError
from netpolicy.model import Policy, PolicyError, load_policy
from netpolicy.model.loader import source_files
from netpolicy.model.compiler import compile_policy
from netpolicy.model.fileid import FileId, file_id
from netpolicy.model.hat import Decision, HatIndex, build_hat_indexes
from netpolicy.model.plan import KernelPlan
from netpolicy.smtp.counters import Counters
from netpolicy.smtp.listener import SmtpListener
from netpolicy.smtp.services import SessionLimits
from netpolicy.smtp.spool import ByteBudget
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.scanner import RspamdClient
from netpolicy.smtp.redis_counters import RedisStore
from netpolicy.smtp.resolver import DnsResolver

log = logging.getLogger("netpolicy.daemon.serve")

RESTART_DELAY = 1.0  # seconds before a failed background loop is started again
COUNTER_EVERY = 5  # kernel refusal counters (metrics only) are read every 5 reconciler intervals
NFLOG_GROUP = 2525  # the group the kernel rules log refused SYNs to with --verbose-connections


@dataclass
class ServeOptions:
    policy_path: str
    backend: str = "auto"
    mail_log: str | None = None
    verbose_connections: bool = False
    metrics: str | None = None
    reconcile_interval: float = 1.0
    watch_interval: float = 0.5  # a few stat() calls: a changed list reaches the kernel within a second
    full_sync: float = 300.0  # seconds between full reads of the kernel (see Reconciler)
    workers: int = 1  # SMTP processes (netpolicy.daemon.workers); 1: this process serves SMTP itself
    runtime_file: str | None = None  # where a serve with workers lists them for ``status``


@dataclass(frozen=True)
class Prepared:
    """A policy with everything derived from it, before anything is changed."""

    policy: Policy
    plan: KernelPlan
    hats: dict[str, HatIndex]


def _prepare(path: str) -> Prepared:
    """Load, validate, compile and index ``path``; runs in a worker thread (raises PolicyError)."""
    policy = load_policy(path)
    return Prepared(policy, compile_policy(policy), build_hat_indexes(policy))


Signature = tuple[FileId | None, ...]


def _signature(paths: tuple[str, ...]) -> Signature:
    """The identity of each file (``file_id``); None for a file that is not there (being replaced)."""
    found: list[FileId | None] = []
    for path in paths:
        try:
            found.append(file_id(os.stat(path)))
        except OSError:
            found.append(None)
    return tuple(found)


class Daemon:
    reuse_port = False  # listening sockets shared with other processes (SO_REUSEPORT workers)

    def __init__(self, options: ServeOptions, maillog: MailLog | None = None) -> None:
        self.options = options
        self.maillog = maillog or MailLog(options.mail_log)
        self.resolver = DnsResolver()
        self.offences = OffenceTracker()
        self.learner = Learner()
        self.view = DaemonView(dnslist_unexpected=self.resolver.unexpected_answers, learned=self.learner.learned,
                               learned_held=self.learner.held, learn_skipped=self.learner.skipped)
        self.budget = ByteBudget(SessionLimits().inflight_bytes)  # every listener's sessions take from it
        self.scanner = RspamdClient()  # the policy's scanner block, set by each install; one connection pool
        self.view.scans = self.scanner.stats
        self.state = RedisStore()  # the policy's state block: limits shared with other processes and gateways
        self.view.state_store_up = lambda: self.state.up
        self.started = time.time()
        self.shared = SharedRefusals(self.state, f"{socket.gethostname()}:{os.getpid()}:{self.started}")
        self.view.shared_published, self.view.shared_applied = self.shared.published, self.shared.applied
        self.metrics = Metrics(self.view)
        self.listeners: dict[str, SmtpListener] = {}
        self.policy: Policy | None = None
        self.hats: dict[str, HatIndex] = {}
        self.backend: Backend | None = None
        self.reconciler: Reconciler | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._watched: tuple[str, ...] = (options.policy_path,)  # the policy and the files it reads
        self._signature = _signature(self._watched)
        self._tasks: asyncio.TaskGroup | None = None
        self._nflog: NflogReader | None = None

    # -- start-up -------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            prepared = await asyncio.to_thread(_prepare, self.options.policy_path)
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            return 1
        refused = self._refuses(prepared.policy)
        if refused is not None:
            log.error("%s", refused)
            return 1
        self._watch_files_of(prepared.policy)
        self._select_backend()
        plan = prepared.plan
        if self.backend is not None:
            self.reconciler = Reconciler(self.backend, plan, full_sync=self.options.full_sync)
            reconciler = self.reconciler
            self.view.drift_repairs = lambda: reconciler.repairs
            try:
                await self._apply(plan)
            except KernelError as exc:
                log.error("cannot apply the kernel plan: %s", exc)
                return 1
        await self._install(prepared)
        if self.options.metrics:
            self.metrics.serve(self.options.metrics)
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            loops = self._loops()
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            # The plan carries the generation: hashing the policy again would dump the whole
            # model (seconds for a million entries) on the event loop while listeners serve.
            notify(f"READY=1\nSTATUS=policy generation {plan.generation}")
            log.info("serving policy generation %s", plan.generation)
            await self._stop.wait()
            notify("STOPPING=1")
            for sig in (signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            await self._stop_serving()
            await self.shared.close()
            await withdraw(self.state, socket.gethostname(), os.getpid())
            await self.state.close()
            await self.scanner.close()
            for task in loops:
                task.cancel()
        # The group has waited for what was still running (a reload, a promotion).
        self.maillog.close()
        return 0

    # -- background work ------------------------------------------------------------------------

    def _loops(self) -> list[asyncio.Task[None]]:
        """Start the daemon's background loops (in its task group)."""
        loops = [self._supervise("policy watcher", self._watch)]
        if self.reconciler is not None:
            reconciler = self.reconciler
            loops.append(self._supervise("reconciler", lambda: reconciler.run(self.options.reconcile_interval)))
            loops.append(self._supervise("kernel counters", self._read_kernel_counters))
            loops.append(self._supervise("learned refusals", lambda: self.learner.run(self.shared.sink(reconciler))))
        loops.append(self._supervise("fleet heartbeat", self._heartbeat))
        if self.options.verbose_connections and self.backend is not None:
            self._nflog = self._bind_nflog()  # before READY=1: a SYN refused right after it is logged too
            if self._nflog is not None:
                loops.append(self._supervise("NFLOG reader", self._read_nflog))
        return loops

    async def _stop_serving(self) -> None:
        """SIGTERM: stop accepting; open sessions finish under ``SmtpListener.stop``'s grace."""
        await asyncio.gather(*(lst.stop() for lst in self.listeners.values()))

    def _refuses(self, policy: Policy) -> str | None:
        """Why this daemon cannot run ``policy`` at all (None: it can)."""
        return None

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` in the daemon's task group: awaited before serve exits, never dropped."""
        if self._tasks is None:
            work.close()
            return
        try:
            self._tasks.create_task(work)
        except RuntimeError:  # the group has finished: serve is exiting
            work.close()

    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a loop of the daemon; if it raises, log it, count it, and start it again.

        A background loop that dies quietly is the failure serve must not have: a watcher that
        stopped on a bad file never reloaded again. Returning normally means the loop has
        nothing to do here (e.g. no NFLOG socket), and it is not restarted.
        """
        assert self._tasks is not None

        async def supervised() -> None:
            while True:
                try:
                    await run()
                    return
                except Exception:
                    self.view.task_failures[name] = self.view.task_failures.get(name, 0) + 1
                    log.exception("%s failed; restarting it in %.0f s", name, RESTART_DELAY)
                await asyncio.sleep(RESTART_DELAY)

        return self._tasks.create_task(supervised(), name=name)

    def _on_sighup(self) -> None:
        """SIGHUP (``systemctl reload``): reopen the mail log, reload the policy."""
        self.maillog.reopen()
        self._spawn(self.reload("SIGHUP"))

    def _on_sigusr1(self) -> None:
        """SIGUSR1 (logrotate's postrotate): reopen the mail log, nothing else."""
        self.maillog.reopen()
        log.info("mail log reopened (SIGUSR1)")

    def _log_group(self) -> int | None:
        return NFLOG_GROUP if self.options.verbose_connections else None

    def _select_backend(self) -> None:
        if not has_net_admin():
            log.warning("no CAP_NET_ADMIN: kernel enforcement is off, TCPREFUSE is handled in userland (handshake, then RST)")
            return
        try:
            self.backend = select_backend(self.options.backend, log_group=self._log_group())
        except KernelError as exc:
            log.warning("kernel enforcement is off (%s): TCPREFUSE is handled in userland", exc)

    async def _apply(self, plan: KernelPlan) -> None:
        """Hand ``plan`` to the reconciler and apply it now (one path for start, reload, repair)."""
        assert self.reconciler is not None
        started = time.perf_counter()
        self.reconciler.set_plan(plan)
        result = await asyncio.to_thread(self.reconciler.check_once)
        elapsed = time.perf_counter() - started
        self.metrics.apply_seconds.observe(elapsed)
        changes = result.diff.element_changes if result.diff is not None else 0
        log.info("kernel at policy generation %s (%d element changes, %.3f s)", plan.generation, changes, elapsed)

    async def _install(self, prepared: Prepared) -> None:
        """Put ``prepared`` in force: the state store, the scanner, the listeners (``_serve``)."""
        policy, plan, hats = prepared.policy, prepared.plan, prepared.hats
        await self.state.configure(policy.state)
        await self.shared.configure(policy.state, self.reconciler)
        self.scanner.settings = policy.scanner  # sessions read it at each message's end of DATA
        await self._serve(prepared)
        if self.view.generation != plan.generation:
            self.learner.forget()  # the kernel apply has emptied the learned sets
        self.policy, self.hats = policy, hats
        self.view.generation = plan.generation
        self._spawn(self._announce())  # the fleet sees the new generation now, not at the next heartbeat

    async def _serve(self, prepared: Prepared) -> None:
        """The listeners' part of an install: swap, start new, stop removed or rebound ones."""
        policy, hats = prepared.policy, prepared.hats
        wanted = {lst.name: lst for lst in policy.listeners}
        for name, smtp in list(self.listeners.items()):
            new = wanted.get(name)
            if new is None or (new.address, new.port) != (smtp.listener.address, smtp.listener.port):
                await smtp.stop()
                del self.listeners[name]
                self.view.listeners.pop(name, None)
                log.info("listener %s stopped", name)
        for name, listener in wanted.items():
            if name in self.listeners:
                self.listeners[name].swap_hat(hats[name], listener)
                continue
            smtp = SmtpListener(listener, hats[name], self.resolver, self.maillog, counters=self.state.counters(name),
                                on_offence=self._on_offence,
                                on_refusal=self._on_refusal, fds=self.view.fds, budget=self.budget,
                                scanner=self.scanner)
            await smtp.start(reuse_port=self.reuse_port)
            self.listeners[name] = smtp
            self.view.listeners[name] = smtp.stats
            log.info("listener %s on %s port %d", name, listener.address, listener.port)

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self, why: str) -> bool:
        """Validate, apply the kernel diff, then swap listeners; a broken policy changes nothing."""
        async with self._reload_lock:
            notify("RELOADING=1")
            try:
                return await self._reload(why)
            except Exception:  # a bug must not end the file watcher: log it, keep the policy in force
                log.exception("reload (%s) failed, policy unchanged", why)
                return False
            finally:
                notify("READY=1")

    async def _reload(self, why: str) -> bool:
        self._signature = _signature(self._watched)
        try:
            prepared = await asyncio.to_thread(_prepare, self.options.policy_path)
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("reload (%s) refused, policy unchanged: %s", why, problem)
            return False
        self._watch_files_of(prepared.policy)
        refused = self._refuses(prepared.policy)
        if refused is not None:
            log.error("reload (%s) refused, policy unchanged: %s", why, refused)
            return False
        plan = prepared.plan
        if self.policy is not None and plan.generation == self.view.generation:
            log.info("reload (%s): policy generation %s unchanged", why, plan.generation)
            return True
        try:
            if self.reconciler is not None:
                await self._apply(plan)
            await self._install(prepared)
        except (KernelError, OSError) as exc:
            log.error("reload (%s) failed: %s", why, exc)
            return False
        log.info("reload (%s): now at policy generation %s", why, plan.generation)
        return True

    def _watch_files_of(self, policy: Policy) -> None:
        """Watch the policy file and every file it read (``file:`` lists, the GeoIP database).
        Kept from the last policy that loaded: a broken one names no files to trust."""
        watched = (self.options.policy_path, *source_files(policy))
        if watched != self._watched:
            self._watched = watched
            self._signature = _signature(watched)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.watch_interval)
            signature = _signature(self._watched)
            if signature[0] is not None and signature != self._signature:
                changed = [path for path, old, new in zip(self._watched, self._signature, signature, strict=True) if old != new]
                await self.reload("policy file changed" if changed == [self.options.policy_path] else
                                  f"{', '.join(os.path.basename(p) for p in changed)} changed")

    # -- kernel loops ---------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Announce this gateway to the fleet (netpolicy.daemon.fleet) and publish what the
        state store could not take while it was away."""
        while True:
            await self._announce()
            await self.shared.flush()
            await asyncio.sleep(HEARTBEAT)

    async def _announce(self) -> None:
        policy = self.policy
        if policy is None:
            return
        await announce(self.state, Gateway(socket.gethostname(), os.getpid(),
                                           [f"{lst.name} {_host_port(lst.address, lst.port)}" for lst in policy.listeners],
                                           self.view.generation, self.started, time.time(), self._workers()))

    def _workers(self) -> list[dict[str, Any]]:
        """The SMTP worker processes, for the fleet view (none: this process serves SMTP)."""
        return []

    async def _read_kernel_counters(self) -> None:
        """Kernel refusal counters per listener for the metrics (the reconciler's own loop,
        ``Reconciler.run``, keeps the kernel in step)."""
        reconciler, backend = self.reconciler, self.backend
        assert reconciler is not None and backend is not None
        while True:
            try:
                status = await asyncio.to_thread(backend.status, reconciler.plan)
                self.view.kernel_refusals = {ls.name: ls.refused for ls in status.listeners}
            except KernelError as exc:
                log.warning("kernel counters unavailable: %s", exc)
            await asyncio.sleep(COUNTER_EVERY * self.options.reconcile_interval)

    @staticmethod
    def _bind_nflog() -> NflogReader | None:
        try:
            return NflogReader(NFLOG_GROUP)
        except OSError as exc:
            log.error("verbose connection logging unavailable: %s", exc)
            return None

    async def _read_nflog(self) -> None:
        """Turn each logged kernel refusal into the appliance's ``ICID 0 TCPREFUSE`` line."""
        reader, self._nflog = self._nflog or self._bind_nflog(), None  # bound at start, or again after a failure
        if reader is None:
            return
        by_id = {listener_id(name): name for name in self.hats}  # the listeners may be in worker processes
        try:
            async for packet in reader:
                name = by_id.get(packet.prefix.removeprefix("netpolicy:"))
                if name is None:
                    by_id = {listener_id(n): n for n in self.hats}
                    name = by_id.get(packet.prefix.removeprefix("netpolicy:"))
                hat = self.hats.get(name or "")
                if hat is None:
                    continue
                learned = self._why_learned(hat.listener.name, packet.source)
                if learned is not None:  # refused for DNS answers the address alone does not give
                    self.maillog.kernel_refusal(*learned)
                    continue
                decision = hat.decide(packet.source)
                self.maillog.kernel_refusal(decision.sender_group, decision.match)
        finally:
            reader.close()

    def _enforces(self) -> bool:
        """Whether this daemon's refusals reach a kernel (promotions, learned refusals)."""
        return self.reconciler is not None

    def _why_learned(self, listener: str, address: str) -> tuple[str, str] | None:
        """(sender group, match) of a refusal learned here, which a kernel refusal of it logs."""
        return self.learner.why(listener, address)

    def _on_offence(self, address: str, decision: Decision, kind: str) -> None:
        """A REJECT, DHAP or rate-limit hit: promote the host into the kernel past its threshold.

        With a state store, offences are counted there (the listener's ``hit("offence")``), so
        those a host spreads over workers and gateways add up; the store counts atomically, so
        exactly one process sees the count reach each multiple of ``promote_after`` and promotes
        (a fresh run of offences for the next one, as ``OffenceTracker`` starts afresh). Without
        a store, this process's ``OffenceTracker``."""
        policy = decision.policy
        if policy.promote_after is None or not self._enforces():
            return
        smtp = self.listeners.get(decision.listener)
        if self.state.state is not None and smtp is not None:
            self._spawn(self._count_offence(smtp.counters, address, decision, kind))
            return
        promotion = self.offences.record(decision.listener, address, policy.promote_after, policy.promote_for)
        if promotion is not None:
            self._spawn(self._promote(promotion, kind))

    async def _count_offence(self, counters: Counters, address: str, decision: Decision, kind: str) -> None:
        policy = decision.policy
        assert policy.promote_after is not None
        offences = await counters.hit("offence", address, OFFENCE_WINDOW)
        if offences % policy.promote_after == 0:
            await self._promote(PromotionDecision(decision.listener, address, policy.promote_for, offences), kind)

    async def _promote(self, promotion: PromotionDecision, kind: str) -> None:
        """Into this kernel, then tell the fleet."""
        reconciler = self.reconciler
        assert reconciler is not None
        try:
            await asyncio.to_thread(reconciler.promote, promotion.listener, promotion.address, promotion.seconds)
        except Exception as exc:  # a failed promotion must not end the task group
            log.error("could not promote %s: %s", promotion.address, exc)
            return
        self._promoted(promotion, kind, "into the kernel")
        await self.shared.publish("promoted", promotion.listener, promotion.address, promotion.seconds, self.view.generation)

    def _promoted(self, promotion: PromotionDecision, kind: str, where: str) -> None:
        self.view.promotions[promotion.listener] = self.view.promotions.get(promotion.listener, 0) + 1
        log.info("promoted %s on %s %s for %d s after %d offences (last: %s)",
                 promotion.address, promotion.listener, where, promotion.seconds, promotion.offences, kind)

    def _on_refusal(self, address: str, decision: Decision, hat: HatIndex) -> None:
        """A userland TCPREFUSE: learn it into the kernel when it rests on DNS answers. Only a
        decision made with the HAT in force is learned: between a reload's kernel apply and
        its swap of the listeners, the old HAT is still current but the reconciler drops what
        was decided under the old generation."""
        policy = self.policy
        if not self._enforces() or policy is None or self.hats.get(decision.listener) is not hat:
            return
        seconds = learn_seconds(decision, hat.listener, policy.learn_refusals)
        if seconds is not None:
            self.learner.offer(decision, seconds, self.view.generation)


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def configure_logging(who: str = "") -> None:
    """serve's log lines on standard error; ``who`` names the process among serve's ("worker 1 ")."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
    # aiosmtpd logs every peer and disconnect at INFO; the appliance-format mail log says it better.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def serve(options: ServeOptions) -> int:
    configure_logging()
    # uvloop: about 1.3x the messages per second of the default loop on this workload (bench_smtp).
    return uvloop.run(Daemon(options).run())
