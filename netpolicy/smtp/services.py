"""What every session of a listener shares: limits, stats, the generation it decides with.

Kept apart from ``listener`` so that ``session`` (one connection) and ``listener`` (the socket
and its sessions) both import these values without importing each other.

Counters, the mail log, the resolver and the stats outlive generations: a reload must not reset
hourly rate limits or the open-connection counts of sessions still running.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from netpolicy.model.hat import Decision, HatIndex, Resolver
from netpolicy.model.policy import Listener
from netpolicy.smtp.counters import Counters
from netpolicy.smtp.delivery import Sink, make_sink
from netpolicy.smtp.fds import FdWatch
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.rat import Rat
from netpolicy.smtp.scanner import RspamdClient
from netpolicy.smtp.spool import ByteBudget

log = logging.getLogger("netpolicy.smtp")

OffenceHook = Callable[[str, Decision, str], None]
"""``on_offence(address, decision, kind)``; kind is "reject", "dhap", "rate-limit" or
"pregreet" (the client talked before the greeting).

Called synchronously from the session: it must not block (schedule work, do not await it).
"""

RefusalHook = Callable[[str, Decision, HatIndex], None]
"""``on_refusal(address, decision, hat)``: the session refused ``address`` in userland
(TCPREFUSE) on ``decision``, made with ``hat`` (so serve can tell a decision of a policy it has
since replaced). serve learns DNS-based refusals into the kernel from it. Must not block.
"""


@dataclass(frozen=True)
class SessionLimits:
    """Protocol-level bounds that hold whatever the policy says (robustness, not policy)."""

    command_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: 5 minutes between commands
    data_deadline: float = 600.0  # whole DATA phase, not reset per line (slow-drip clients)
    decision_timeout: float = 10.0  # reverse DNS + DNS lists before the banner
    line_length: int = 1001  # RFC 5321 4.5.3.1.6: 1000 octets with CRLF, plus a stuffed dot
    message_size_cap: int = 64 * 1024 * 1024  # memory bound when a policy sets no size limit
    recipients_cap: int = 1000  # likewise for max_rcpts_per_msg
    bogus_commands: int = 5  # unknown commands before the connection is dropped
    stop_grace: float = 10.0  # stop(): time given to open sessions before they get 421
    # Bytes of messages in flight in the whole process (spool.py): 30 senders of 10 MB fit
    # twice over; past it a message gets 452 4.3.1 and the client keeps it. In memory a
    # session holds at most 256 KiB of it, the rest is in spool files.
    inflight_bytes: int = 512 * 1024 * 1024
    spool_dir: str | None = None  # spool files (nameless: O_TMPFILE); None: $TMPDIR or /tmp


@dataclass
class ListenerStats:
    """Plain counters a prometheus collector can read; updated only from the event loop."""

    connections: Counter[tuple[str, str]] = field(default_factory=Counter)  # (group, behaviour)
    open_connections: int = 0
    refused_concurrency: int = 0
    pregreet: int = 0  # refused for talking before the greeting
    messages_accepted: int = 0  # fully received and handed to the sink
    messages_delivered: int = 0  # the sink (Maildir / next hop) took it: client got 250
    messages_temp_failed: int = 0  # the client got 4xx from the hand-off and keeps the message
    messages_rejected: int = 0  # the next hop refused it permanently
    messages_too_big: int = 0
    recipients_refused: Counter[str] = field(default_factory=Counter)  # by reason

    def connection(self, group: str, behavior: str) -> None:
        self.connections[(group, behavior)] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "connections": {f"{g}/{b}": n for (g, b), n in sorted(self.connections.items())},
            "open_connections": self.open_connections,
            "refused_concurrency": self.refused_concurrency,
            "pregreet": self.pregreet,
            "messages_accepted": self.messages_accepted,
            "messages_delivered": self.messages_delivered,
            "messages_temp_failed": self.messages_temp_failed,
            "messages_rejected": self.messages_rejected,
            "messages_too_big": self.messages_too_big,
            "recipients_refused": dict(sorted(self.recipients_refused.items())),
        }


@dataclass(frozen=True)
class Generation:
    """Everything a session decides with, fixed for the session's lifetime."""

    listener: Listener
    hat: HatIndex
    rat: Rat
    sink: Sink
    tls_context: ssl.SSLContext | None


class OpenSession(Protocol):
    """What the listener needs of a session to shut it down (``session.OpenSession``)."""

    def end(self, reply: str) -> "asyncio.Task[None] | None":
        """Send ``reply`` if the client can still hear it, close; the task to wait for."""
        ...


class OpenSessions:
    """The sessions of one listener, with an event that is set whenever there are none, so
    ``stop()`` wakes the moment the last one ends instead of polling."""

    def __init__(self) -> None:
        self._sessions: set[OpenSession] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: OpenSession) -> None:
        self._sessions.add(session)
        self._empty.clear()

    def discard(self, session: OpenSession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[OpenSession]:
        return iter(list(self._sessions))

    async def drained(self) -> None:
        """Wait until no session is open (the caller bounds the wait)."""
        await self._empty.wait()


@dataclass
class Services:
    """What sessions share across generations."""

    resolver: Resolver
    counters: Counters
    maillog: MailLog
    limits: SessionLimits
    stats: ListenerStats
    on_offence: OffenceHook | None
    budget: ByteBudget  # bytes of messages in flight; one per process when serve passes its own
    sessions: OpenSessions = field(default_factory=OpenSessions)
    fds: FdWatch = field(default_factory=FdWatch)  # one per process when serve passes its own
    scanner: RspamdClient = field(default_factory=RspamdClient)  # one per process when serve passes its own
    on_refusal: RefusalHook | None = None

    def offence(self, address: str, decision: Decision, kind: str) -> None:
        if self.on_offence is None:
            return
        try:
            self.on_offence(address, decision, kind)
        except Exception:  # a broken hook must not break the SMTP session
            log.exception("on_offence hook failed for %s (%s)", address, kind)

    def refused(self, address: str, decision: Decision, hat: HatIndex) -> None:
        if self.on_refusal is None:
            return
        try:
            self.on_refusal(address, decision, hat)
        except Exception:  # a broken hook must not break the SMTP session
            log.exception("on_refusal hook failed for %s", address)


def build_generation(listener: Listener, hat: HatIndex, previous: Generation | None = None) -> Generation:
    """A generation for ``listener``; the sink of ``previous`` is kept when delivery is unchanged
    (a Maildir sink owns a pool of writer threads: a reload should not start another)."""
    tls_context: ssl.SSLContext | None = None
    if listener.tls_cert is not None and listener.tls_key is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(listener.tls_cert, listener.tls_key)
    rat = Rat.from_rows(listener.rat) if listener.type == "public" else Rat.open()
    same_sink = previous is not None and (previous.listener.delivery, previous.listener.hostname) == (listener.delivery, listener.hostname)
    sink = previous.sink if same_sink and previous is not None else make_sink(listener.delivery, listener.hostname)
    return Generation(listener, hat, rat, sink, tls_context)
