"""``SmtpListener``: one policy listener served by ``PolicySMTP`` sessions.

This is the object ``serve`` owns, one per listener in the policy::

    listener = SmtpListener(policy.listener("IncomingMail"), hat_indexes["IncomingMail"],
                            DnsResolver(), MailLog(), counters=InMemoryCounters(),
                            on_offence=promote, on_refusal=learn)
    await listener.start()            # binds listener.address:port (or start(sock=...))
    listener.swap_hat(new_hat, new_listener_model)   # reload: new connections only
    listener.stats.snapshot()         # for prometheus
    await listener.stop()

A reload builds a new ``Generation`` (HAT index, RAT, sink, TLS context) and swaps one
reference: a session keeps the generation it was decided under until it ends, so a reload
never changes the rules in the middle of a conversation, and new connections see the new
policy at once. Binding (address, port) is not part of a generation: a changed bind needs a new
listener.

What sessions share (limits, stats, the generation) is in ``services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from netpolicy.model.hat import HatIndex, Resolver
from netpolicy.model.policy import Listener
from netpolicy.smtp.counters import Counters, InMemoryCounters
from netpolicy.smtp.delivery import Sink
from netpolicy.smtp.fds import FdWatch
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.services import (
    ListenerStats,
    OffenceHook,
    RefusalHook,
    Services,
    SessionLimits,
    build_generation,
)
from netpolicy.smtp.scanner import RspamdClient
from netpolicy.smtp.session import PolicySMTP
from netpolicy.smtp.spool import ByteBudget


def listening_socket(address: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """The listener's socket. ``::`` serves IPv4 too (asyncio would make it IPv6-only), so
    ``address: "::"`` means every address of the host, as it does for the kernel rules."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class SmtpListener:
    """One listener of the policy, served on one socket."""

    def __init__(
        self,
        listener: Listener,
        hat: HatIndex,
        resolver: Resolver,
        maillog: MailLog,
        *,
        counters: Counters | None = None,
        on_offence: OffenceHook | None = None,
        on_refusal: RefusalHook | None = None,
        limits: SessionLimits | None = None,
        fds: FdWatch | None = None,
        budget: ByteBudget | None = None,
        scanner: RspamdClient | None = None,
    ) -> None:
        self.stats = ListenerStats()
        limits = limits or SessionLimits()
        self._services = Services(resolver, counters or InMemoryCounters(), maillog, limits, self.stats, on_offence,
                                  budget or ByteBudget(limits.inflight_bytes), fds=fds or FdWatch(),
                                  on_refusal=on_refusal, scanner=scanner or RspamdClient())
        self._generation = build_generation(listener, hat)
        self._server: asyncio.Server | None = None
        self._retired_sinks: list[Sink] = []

    @property
    def listener(self) -> Listener:
        return self._generation.listener

    @property
    def counters(self) -> Counters:
        return self._services.counters

    @property
    def budget(self) -> ByteBudget:
        """The in-flight byte budget its sessions take from."""
        return self._services.budget

    def _session(self) -> PolicySMTP:
        return PolicySMTP(self._generation, self._services)

    async def start(self, sock: socket.socket | None = None, *, reuse_port: bool = False, backlog: int = 1024) -> None:
        """Serve on ``sock`` (already bound and listening) or bind the listener's address:port.

        ``reuse_port`` lets several worker processes share the port (SO_REUSEPORT).
        """
        if sock is None:
            sock = listening_socket(self.listener.address, self.listener.port, reuse_port=reuse_port, backlog=backlog)
        self._server = await asyncio.get_running_loop().create_server(self._session, sock=sock, backlog=backlog)

    @property
    def bound(self) -> list[tuple[str, int]]:
        """Addresses actually served (useful with port 0)."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    def swap_hat(self, hat: HatIndex, listener: Listener) -> None:
        """Reload: new connections use ``hat``/``listener``; open sessions keep theirs."""
        old = self._generation.listener
        if (listener.name, listener.address, listener.port) != (old.name, old.address, old.port):
            raise ValueError("name, address and port cannot change on reload; start a new listener")
        previous = self._generation
        self._generation = build_generation(listener, hat, previous)
        if self._generation.sink is not previous.sink:
            self._retired_sinks.append(previous.sink)  # sessions of the old generation may still use it

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give open sessions ``grace`` seconds, then end them with 421."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        sessions = self._services.sessions
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._services.limits.stop_grace if grace is None else grace):
                await sessions.drained()
        hostname = self.listener.hostname
        ending = [session.end(f"421 4.3.2 {hostname} Service shutting down") for session in sessions]
        tasks = [task for task in ending if task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for sink in (*self._retired_sinks, self._generation.sink):
            await sink.close()
        self._retired_sinks.clear()
