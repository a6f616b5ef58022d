"""Promotions and learned refusals shared by every gateway on one state store (SPEC.md section 10).

When this gateway promotes a host or learns a refusal into its kernel, it writes one key per host,
``<prefix>held:<kind>:<listener>:<address>``, set to expire when the refusal does (its value the
publishing process and the policy generation the refusal was decided under), and appends an event to the stream ``<prefix>held``
(``XADD MAXLEN ~ 10000``: the stream only carries news, the keys hold the state). Every gateway
follows the stream and hands what it reads, in batches, to its own reconciler in a thread, for
the time the event gives; a gateway that starts later, or whose link to the store comes back,
first reads the stream's last id, then loads every key still running (``SCAN``, ``PTTL`` each),
then follows the stream from that id: nothing published in between is missed, and the stream's
older entries are never applied with a stale time (the keys' ``PTTL`` is exact).

Why a stream read with ``XREAD BLOCK`` rather than ``SUBSCRIBE``: a subscribed connection
receives pushes that do not answer a request, which the pipelined client (``resp``) matches to
requests by position; a blocking read is one request with one reply, and the stream's ids let a
reconnection start exactly where the keys were read. It has a connection of its own: a blocked
read would hold up every counter request pipelined behind it.

Which gateways apply what: a promotion rests on the host's offences, not on a policy, so every
gateway applies it on the listener of the same name, whatever generation it runs. A learned
refusal rests on DNS answers judged under one policy: it is applied only by a gateway running the
same policy generation (``Reconciler.learn`` drops the others), since under another policy the
same answers might not refuse the host. Listeners the receiving gateway does not enforce in the
kernel are skipped.

Store down: nothing changes locally (the kernel already holds the refusal); what could not be
published is kept with its deadline and published, for the time left, by the next ``flush``
(serve calls it with every heartbeat) once the store answers. The follower reconnects with the
store's backoff; the outage itself is logged once by ``RedisStore``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netpolicy.kernel.learning import MIN_SECONDS, Learning, LearningSink
from netpolicy.kernel.reconciler import Reconciler
from netpolicy.kernel.values import KernelError
from netpolicy.model.policy import State
from netpolicy.smtp.redis_counters import FAILURES, RedisStore
from netpolicy.smtp.resp import Reply, RespConnection, pack

log = logging.getLogger("netpolicy.shared")

KINDS = ("promoted", "learned")
STREAM_LENGTH = 10_000  # approximate cap of the event stream (news only; the keys hold the state)
BLOCK = 1.0  # seconds one XREAD waits for news before it is asked again
BATCH = 1000  # events read at once


@dataclass(frozen=True)
class Held:
    """One host refused on ``listener`` for ``seconds`` more, as published in the store."""

    kind: str  # "promoted" or "learned"
    listener: str
    address: str
    seconds: float
    generation: str
    origin: str = ""  # the publishing process (its own events are skipped)


def key_prefix(prefix: str) -> str:
    return f"{prefix}held:"


def host_key(prefix: str, held: Held) -> str:
    return f"{key_prefix(prefix)}{held.kind}:{held.listener}:{held.address}"


def parse_key(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(kind, listener, address) of a host key; None for anything else under the prefix."""
    parts = key.removeprefix(key_prefix(prefix)).split(":", 2)  # an IPv6 address keeps its colons
    if len(parts) != 3 or parts[0] not in KINDS:
        return None
    try:
        ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    return parts[0], parts[1], parts[2]


def glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN's MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def parse_entries(reply: Reply) -> tuple[str | None, list[Held]]:
    """The last id and the events of an XREAD reply (None, [] when it timed out)."""
    last: str | None = None
    found: list[Held] = []
    if not isinstance(reply, list):
        return last, found
    for stream in reply:
        if not (isinstance(stream, list) and len(stream) == 2 and isinstance(stream[1], list)):
            continue
        for entry in stream[1]:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes) and isinstance(entry[1], list)):
                continue
            last = entry[0].decode()
            pairs = [item.decode() if isinstance(item, bytes) else "" for item in entry[1]]
            fields = dict(zip(pairs[::2], pairs[1::2], strict=False))
            held = _held(fields)
            if held is not None:
                found.append(held)
    return last, found


def _held(fields: dict[str, str]) -> Held | None:
    try:
        held = Held(fields["k"], fields["l"], str(ipaddress.ip_address(fields["a"])), int(fields["ms"]) / 1000,
                    fields.get("g", ""), fields.get("o", ""))
    except (KeyError, ValueError):
        return None
    return held if held.kind in KINDS else None


def apply_batch(reconciler: Reconciler, batch: Iterable[Held], clock: Callable[[], float] = time.monotonic) -> list[Held]:
    """Put ``batch`` into this gateway's kernel sets through its reconciler (which keeps them
    across drift repairs); returns what it took. Blocking: run it in a thread."""
    kernel = {lp.name for lp in reconciler.plan.kernel_listeners()}
    taken: list[Held] = []
    learned: list[tuple[Held, Learning]] = []
    now = clock()
    for held in batch:
        if held.listener not in kernel or held.seconds < MIN_SECONDS:
            continue
        if held.kind == "promoted":
            try:
                reconciler.promote(held.listener, held.address, held.seconds)
            except KernelError as exc:
                log.error("could not promote %s on %s as another gateway did: %s", held.address, held.listener, exc)
                continue
            taken.append(held)
        else:
            seconds = int(held.seconds)
            learned.append((held, Learning(held.listener, held.address, seconds, now + seconds, held.generation)))
    if learned:
        kept = set(map(id, reconciler.learn([item for _, item in learned])))
        taken.extend(held for held, item in learned if id(item) in kept)
    return taken


class SharedRefusals:
    """This gateway's side: ``publish`` what it refuses, ``configure`` to follow the others."""

    def __init__(self, store: RedisStore, origin: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.origin = origin
        self.published: Counter[str] = Counter()  # kind -> events this gateway published
        self.applied: Counter[str] = Counter()  # kind -> hosts from other gateways put into the kernel
        self._clock = clock
        self._unpublished: dict[tuple[str, str, str], tuple[Held, float]] = {}  # key -> (event, deadline)
        self._state: State | None = None
        self._reconciler: Reconciler | None = None
        self._follower: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[bool]] = set()

    async def configure(self, state: State | None, reconciler: Reconciler | None) -> None:
        """Follow the store named by ``state`` into ``reconciler`` (called on every install)."""
        if state == self._state and reconciler is self._reconciler and self._follower is not None:
            return
        await self.close()
        self._state, self._reconciler = state, reconciler
        if state is not None and reconciler is not None:
            self._follower = asyncio.ensure_future(self._follow(state, reconciler))

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, kind: str, listener: str, address: str, seconds: float, generation: str) -> bool:
        """Tell the fleet; kept for a later ``flush`` when the store does not take it."""
        held = Held(kind, listener, address, seconds, generation, self.origin)
        if self.store.state is None:
            return False
        if await self._send(held):
            return True
        self._unpublished[(kind, listener, address)] = (held, self._clock() + seconds)
        return False

    def publish_learned(self, taken: Iterable[Learning]) -> None:
        """Publish learned refusals (from the event loop; returns at once)."""
        for item in taken:
            task = asyncio.ensure_future(self.publish("learned", item.listener, item.address, item.seconds, item.generation))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    def sink(self, reconciler: Reconciler) -> LearningSink:
        """``reconciler`` as the learner's sink, publishing what it takes."""
        return _PublishingSink(reconciler, self, asyncio.get_running_loop())

    async def flush(self) -> None:
        """Publish, for the time they have left, what the store did not take before."""
        if not self._unpublished or not self.store.up:
            return
        now = self._clock()
        pending, self._unpublished = self._unpublished, {}
        for held, deadline in pending.values():
            left = deadline - now
            if left >= MIN_SECONDS:
                await self.publish(held.kind, held.listener, held.address, left, held.generation)

    async def _send(self, held: Held) -> bool:
        prefix = self.store.prefix
        ms = math.ceil(held.seconds * 1000)
        write, event = await asyncio.gather(
            self.store.call(pack(b"SET", host_key(prefix, held), f"{held.origin} {held.generation}", b"PX", ms)),
            self.store.call(pack(b"XADD", f"{prefix}held", b"MAXLEN", b"~", STREAM_LENGTH, b"*", b"k", held.kind,
                                 b"l", held.listener, b"a", held.address, b"ms", ms, b"g", held.generation,
                                 b"o", held.origin)))
        if write is None or event is None:
            return False
        self.published[held.kind] += 1
        return True

    # -- following -------------------------------------------------------------------------

    async def _follow(self, state: State, reconciler: Reconciler) -> None:
        """Load what runs, then apply the news, reconnecting with backoff while the store is away."""
        delay = self.store.retry
        while True:
            try:
                connection = await RespConnection.open(state.redis, BLOCK + self.store.timeout)
            except FAILURES as exc:
                log.debug("refusals of other gateways: no store (%s)", exc)
            else:
                try:
                    last = await self._last_id(connection, state.prefix)
                    running = await self._running(connection, state.prefix)
                    await self._apply(reconciler, [held for held in running if held.origin != self.origin])
                    delay = self.store.retry
                    while True:
                        reply = await connection.call("XREAD", "COUNT", BATCH, "BLOCK", int(BLOCK * 1000),
                                                      "STREAMS", f"{state.prefix}held", last)
                        found, batch = parse_entries(reply)
                        last = found or last
                        await self._apply(reconciler, [held for held in batch if held.origin != self.origin])
                except FAILURES as exc:
                    log.debug("refusals of other gateways: store lost (%s)", exc)
                finally:
                    connection.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.store.retry_max)

    @staticmethod
    async def _last_id(connection: RespConnection, prefix: str) -> str:
        match await connection.call("XREVRANGE", f"{prefix}held", "+", "-", "COUNT", 1):
            case [[bytes() as last, *_], *_]:
                return last.decode()
        return "0-0"

    @staticmethod
    async def _running(connection: RespConnection, prefix: str) -> list[Held]:
        """Every host key still running, with its time left."""
        keys: list[str] = []
        cursor = b"0"
        while True:
            match await connection.call("SCAN", cursor, "MATCH", glob_escape(key_prefix(prefix)) + "*", "COUNT", BATCH):
                case [bytes() as cursor, list() as batch]:
                    keys.extend(k.decode() for k in batch if isinstance(k, bytes))
                case _:
                    break
            if cursor == b"0":
                break
        running: list[Held] = []
        replies = [(key, connection.request(pack(b"PTTL", key)), connection.request(pack(b"GET", key))) for key in keys]
        for key, ttl_reply, value_reply in replies:
            ttl, value, parsed = await ttl_reply, await value_reply, parse_key(prefix, key)
            if parsed is None or not isinstance(ttl, int) or ttl <= 0:
                continue
            origin, _, generation = (value.decode() if isinstance(value, bytes) else "").partition(" ")
            running.append(Held(*parsed, ttl / 1000, generation, origin))
        return running

    async def _apply(self, reconciler: Reconciler, batch: list[Held]) -> None:
        if not batch:
            return
        taken = await asyncio.to_thread(apply_batch, reconciler, batch, self._clock)
        for held in taken:
            self.applied[held.kind] += 1
        if taken:
            log.info("%s from other gateways: %s", "; ".join(f"{n} {kind}" for kind, n in Counter(h.kind for h in taken).items()),
                     ", ".join(f"{h.address} on {h.listener} for {h.seconds:.0f} s" for h in taken[:10])
                     + (f" and {len(taken) - 10} more" if len(taken) > 10 else ""))


class _PublishingSink:
    """The reconciler as the learner's sink: what it takes is published from the event loop."""

    def __init__(self, reconciler: Reconciler, shared: SharedRefusals, loop: asyncio.AbstractEventLoop) -> None:
        self.reconciler = reconciler
        self.shared = shared
        self.loop = loop

    def learn(self, batch: list[Learning]) -> list[Learning]:
        taken = self.reconciler.learn(batch)
        if taken:
            self.loop.call_soon_threadsafe(self.shared.publish_learned, taken)
        return taken
