"""``Counters`` shared by every process and gateway through a Redis store (SPEC.md section 10).

``RedisStore`` is one process's link to the store named by the policy's ``state`` block;
``RedisCounters`` is one listener's view of it (keys carry the listener's name, as each listener
has counters of its own without a store). Every check-and-record is one Lua script run by
EVALSHA, so ten gateways together admit no more than the limit. The requests of every session go
over one pipelined connection (``resp.RespConnection``, which says why not redis-py's client).

Hourly windows: one hash per (listener, kind, window, address) whose fields are the 60 bucket
numbers, the in-memory counters' sliding window. A hash rather than a sorted set of events: its
size is bounded by the buckets, not by the traffic (MEMORY USAGE of one address's window after
1000 events an hour: 560 bytes against 92,184 for a sorted set; after 20,000 an hour: 688 against
2,058,008). Beside the buckets it keeps their total and the oldest bucket's number, so a call
reads every bucket only when the oldest has left the window (once a bucket width at most): store
CPU per call 25 µs at 1000 events an hour and 22 µs at 20,000, against 24 and 28 for a sorted
set and 41 and 31 when every call read every bucket. The time is the store's (``TIME`` inside
the script), so gateways whose clocks disagree still share one window. Each write sets the key
to expire one window later, when its last bucket has left the window anyway.

Open connections: one sorted set per (listener, address) of lease ids scored by the time each
lease runs out. The process renews the leases of its open connections every ``lease / 3``
seconds and removes one when its connection closes; the scripts drop expired members before
counting. A gateway that dies stops renewing, and its connections stop counting ``lease`` seconds
later, where an INCR/DECR count would stay wrong for ever.

Faults: an error reply, a lost or refused connection, or a reply later than ``timeout`` marks
the store down for the whole process. The warning ``state store unreachable: limits are per
process until it returns`` is logged once per outage, ``up`` turns false (the
``netpolicy_state_store_up`` gauge), and every view answers from this process alone: windows
from an ``InMemoryCounters`` that also records every event the store accepted (so an outage does
not restart the hour from zero), connection counts from the connections this process has open.
A background task tries a new connection with backoff (``retry`` seconds, doubling up to
``retry_max``); a store that fails again within ``retry_max`` of answering (one that answers a
ping but refuses the work, out of memory say) is the same outage: no second warning, and the
backoff goes on from where it was. When the store answers, it loads the scripts again (a restarted store has none)
and re-adds the lease of every connection this process has open before the store counts again:
those opened during the outage, and all of them after a restart that emptied it. The close of
such a connection removes its lease like any other; a close while the store is down is left to
the lease to expire. A request that timed out may still run once a slow store wakes: an event
then counts both in the store and in the process, never in neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable

from netpolicy.model.policy import State
from netpolicy.smtp.counters import BUCKETS, HOUR, InMemoryCounters
from netpolicy.smtp.resp import Reply, RespConnection, StoreError, pack

log = logging.getLogger("netpolicy.smtp.state")

FAILURES = (OSError, StoreError)  # OSError: refused, lost, TimeoutError

UNREACHABLE = "state store unreachable: limits are per process until it returns"

_NOW = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# ARGV: now (-1: the store's clock), bucket width, limit (-1: none), record (1) or only count (0).
# Returns {recorded (0/1), events in the window (the recorded one included)}.
# Fields: one per bucket (its number), "n" the events in them, "lo" the oldest bucket number.
# Buckets are read and dropped only when "lo" has left the window: once a bucket width at most.
WINDOW = _NOW + f"""
local width = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local bucket = math.floor(now / width)
local oldest = bucket - {BUCKETS - 1}
local meta = redis.call('HMGET', KEYS[1], 'lo', 'n')
local lo, total = tonumber(meta[1]), tonumber(meta[2]) or 0
if lo and lo < oldest then
  local fields = redis.call('HGETALL', KEYS[1])
  lo, total = nil, 0
  for i = 1, #fields, 2 do
    local number = tonumber(fields[i])
    if fields[i] == 'lo' or fields[i] == 'n' then
    elseif number < oldest then
      redis.call('HDEL', KEYS[1], fields[i])
    else
      total = total + tonumber(fields[i + 1])
      if lo == nil or number < lo then lo = number end
    end
  end
  if lo == nil then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 'lo', string.format('%d', lo), 'n', total)
  end
end
if ARGV[4] == '0' or (limit >= 0 and total >= limit) then
  return {{0, total}}
end
redis.call('HINCRBY', KEYS[1], string.format('%d', bucket), 1)
redis.call('HSET', KEYS[1], 'n', total + 1)
if lo == nil or bucket < lo then
  redis.call('HSET', KEYS[1], 'lo', string.format('%d', bucket))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(width * {BUCKETS} * 1000))
return {{1, total + 1}}
"""

_LEASE = """
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

_EXPIRE = """
local ms = math.ceil(lease * 1000)
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
"""

# ARGV: now, lease seconds, limit (-1: none), lease id. Returns 1 if counted, 0 at the limit.
OPEN = _NOW + _LEASE + """
local limit = tonumber(ARGV[3])
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
""" + _EXPIRE + """
return 1
"""

# ARGV: now, lease seconds, lease ids...: (re)adds each id with a fresh lease.
RENEW = _NOW + _LEASE + """
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
""" + _EXPIRE + """
return 0
"""


SCRIPTS = {"window": WINDOW, "open": OPEN, "renew": RENEW}
SHA = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


def evalsha(name: str, key: str, *args: str | float) -> bytes:
    return pack(b"EVALSHA", SHA[name], 1, key, *args)


class RedisStore:
    """One process's link to the state store: health, reconnection, and the leases it holds.

    ``configure(state)`` at start and on every reload: the same ``state`` changes nothing,
    another one closes the old connection and opens the new one, ``None`` leaves every view on
    its per-process counters.
    """

    def __init__(self, *, lease: float = 30.0, timeout: float = 0.25, retry: float = 0.25, retry_max: float = 5.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.lease = lease
        self.timeout = timeout
        self.retry = retry
        self.retry_max = retry_max
        self.clock = clock  # None: the store's clock (tests pass their own)
        self.state: State | None = None
        self.prefix = ""
        self._connection: RespConnection | None = None
        self._views: weakref.WeakSet[RedisCounters] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._delay = retry  # the next wait before trying the store again
        self._back_at = -math.inf  # when a reconnection last succeeded (monotonic)
        self._quiet = False  # failing again moments after coming back: not logged again
        self._ids = 0
        self._token = os.urandom(6).hex()

    @property
    def up(self) -> bool | None:
        """None without a store; else whether the counters are shared right now."""
        return None if self.state is None else self._connection is not None

    def counters(self, scope: str) -> RedisCounters:
        """The view of one listener."""
        view = RedisCounters(self, scope)
        self._views.add(view)
        return view

    async def configure(self, state: State | None) -> None:
        """Share through ``state`` (None: per process), waiting at most ``timeout`` for the store."""
        if state == self.state:
            return
        await self.close()
        self.state, self._delay, self._back_at, self._quiet = state, self.retry, -math.inf, False
        if state is None:
            return
        self.prefix = state.prefix
        self._start(self._renewing())
        found = await self._connect(state.redis)
        if isinstance(found, RespConnection):
            self._shared(found, "reachable")
        else:
            self._down(found)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        connection, self._connection, self.state = self._connection, None, None
        if connection is not None:
            connection.close()

    def new_id(self) -> str:
        self._ids += 1
        return f"{self._token}:{self._ids:x}"

    def now(self) -> float:
        return -1.0 if self.clock is None else self.clock()

    async def call(self, command: bytes) -> Reply | None:
        """The reply to ``command`` if the store is up; None when it is not or fails (then it is down)."""
        connection = self._connection
        if connection is None:
            return None
        try:
            return await connection.request(command)
        except FAILURES as exc:
            self._lost(connection, exc)
            return None

    def _lost(self, connection: RespConnection, exc: BaseException) -> None:
        if connection is self._connection:
            self._down(exc)

    def _down(self, exc: BaseException) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # its on_lost finds it no longer in use
        self._quiet = time.monotonic() - self._back_at < self.retry_max
        if self._quiet:  # a store that answers a ping but fails the work (out of memory, say)
            log.debug("%s again (%s: %s)", UNREACHABLE, type(exc).__name__, exc)
        else:
            log.warning("%s (%s: %s)", UNREACHABLE, type(exc).__name__, exc)
            self._delay = self.retry
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._start(self._reconnect())

    def _shared(self, connection: RespConnection, how: str) -> None:
        self._connection = connection
        if not self._quiet:
            log.info("state store %s: limits are shared", how)

    def _start(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self, url: str) -> RespConnection | BaseException:
        """A connection to a store that answers, has the scripts and this process's leases; else why not."""
        try:
            connection = await RespConnection.open(url, self.timeout)
        except FAILURES as exc:
            return exc
        connection.on_lost = lambda exc: self._lost(connection, exc)
        try:
            await connection.call("PING")
            for name, body in SCRIPTS.items():
                if await connection.call("SCRIPT", "LOAD", body) != SHA[name].encode():
                    raise StoreError(f"the store names the {name} script otherwise than its SHA1")
            await self._renew(connection)
        except FAILURES as exc:
            connection.close()
            return exc
        return connection

    async def _reconnect(self) -> None:
        """Try a new connection with backoff until the store answers, then share again."""
        assert self.state is not None
        while True:
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.retry_max)
            found = await self._connect(self.state.redis)
            if isinstance(found, RespConnection):
                break
        self._back_at = time.monotonic()
        self._shared(found, "reachable again")

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            connection = self._connection
            if connection is None:
                continue
            try:
                await self._renew(connection)
            except FAILURES as exc:
                self._lost(connection, exc)

    async def _renew(self, connection: RespConnection) -> None:
        """Give every connection this process has open a fresh lease (adding those missing)."""
        now = self.now()
        replies = [connection.request(evalsha("renew", view.key(address), now, self.lease, *ids))
                   for view in list(self._views) for address, ids in view.open.items() if ids]
        await asyncio.gather(*replies)


class RedisCounters:
    """``Counters`` of one listener on the shared store, per process while it is down."""

    def __init__(self, store: RedisStore, scope: str) -> None:
        self.store = store
        self.scope = scope
        self.local = InMemoryCounters()
        self.open: dict[str, list[str]] = {}  # address -> lease ids of this process's open connections

    def key(self, address: str) -> str:
        return f"{self.store.prefix}conn:{self.scope}:{address}"

    def _window_key(self, kind: str, address: str, window: float) -> str:
        return f"{self.store.prefix}win:{self.scope}:{kind}:{window:g}:{address}"

    async def open_connection(self, address: str, limit: int | None) -> bool:
        store = self.store
        lease = store.new_id()
        counted = await store.call(evalsha("open", self.key(address), store.now(), store.lease, -1 if limit is None else limit, lease))
        if counted is None:
            counted = limit is None or len(self.open.get(address, ())) < limit
        if counted:
            self.open.setdefault(address, []).append(lease)
        return bool(counted)

    async def close_connection(self, address: str) -> None:
        ids = self.open.get(address)
        if not ids:
            return
        lease = ids.pop()
        if not ids:
            del self.open[address]
        await self.store.call(pack(b"ZREM", self.key(address), lease))

    async def _window(self, kind: str, address: str, window: float, limit: int | None, record: bool) -> tuple[bool, int] | None:
        store = self.store
        reply = await store.call(evalsha("window", self._window_key(kind, address, window), store.now(), window / BUCKETS,
                                         -1 if limit is None else limit, int(record)))
        match reply:
            case [int() as recorded, int() as total]:
                if recorded:
                    await self.local.hit(kind, address, window)
                return bool(recorded), total
        return None

    async def take(self, kind: str, address: str, limit: int | None, window: float = HOUR) -> bool:
        shared = await self._window(kind, address, window, limit, True)
        return await self.local.take(kind, address, limit, window) if shared is None else shared[0]

    async def hit(self, kind: str, address: str, window: float = HOUR) -> int:
        shared = await self._window(kind, address, window, None, True)
        return await self.local.hit(kind, address, window) if shared is None else shared[1]

    async def count(self, kind: str, address: str, window: float = HOUR) -> int:
        shared = await self._window(kind, address, window, None, False)
        return await self.local.count(kind, address, window) if shared is None else shared[1]
