"""A lean client for the state store: one connection, every request pipelined as it comes (RESP2).

Why not redis-py's asyncio client for this: every check of a session is one round trip on the
session's path, and redis-py spends 130-175 µs of CPU on one script call (connection pool
checkout, retry wrapper, encoder, a write of several chunks) against 22 µs for the same EVALSHA
written as one buffer on one connection; the store itself spent 157 µs of CPU per message
(three calls) against about 60. With one listener process that was 0.68x the messages per
second of the in-memory counters (bench/bench_counters.py). A bounded pool also refused calls
outright ("No connection available") when 20 sessions asked at once.

One connection carries every request: Redis answers in order, so replies are matched to
requests by position. The commands asked during one turn of the event loop leave in one write,
so the store reads them at once: with 20 sessions asking, a message (connection lease, recipient
window, lease removal) costs 30 µs of client CPU and 23 µs of the store's, against 57 and 43
with one write per command. A reply later than ``timeout`` fails every request waiting and closes
the connection: the caller treats it as a lost store (one timer per connection, not one per
request).

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS, the server's
certificate checked against the system's CA store or ``?ssl_ca_certs=/path/ca.pem``),
``unix:///path[?db=N]``, and
``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]``:
Redis Sentinel, for a store that fails over. Each connection asks the sentinels in turn
(``SENTINEL get-master-addr-by-name``) where the master is, connects there and checks with
``ROLE`` that it is the master (a sentinel's answer can be stale during a failover); the user and
password are the master's. A failover needs nothing more: the old master drops its clients when
it is demoted (or is dead), its writes fail with ``READONLY`` meanwhile, and the store's
reconnection (``RedisStore``) opens a connection that asks the sentinels again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

from netpolicy.model.store_url import SentinelUrl

Reply = bytes | int | list["Reply"] | None

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


class StoreError(Exception):
    """An error reply of the store (``-ERR ...``, ``-NOSCRIPT ...``)."""


def pack(*args: bytes | str | int | float) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply | StoreError, int] | None:
    """The reply starting at ``pos`` and where the next one starts; None if not all there yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b":":
        return int(line), pos
    if kind == b"-":
        return StoreError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            return None
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            found = parse(buf, pos)
            if found is None:
                return None
            item, pos = found
            if isinstance(item, StoreError):
                raise StoreError(f"error inside an array reply: {item}")
            items.append(item)
        return items, pos
    raise ConnectionError(f"not a RESP reply: {bytes(buf[pos - len(line) - 3:end])!r}")


class RespConnection(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.on_lost: Callable[[OSError], None] | None = None  # told once, when the connection is lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._outgoing: list[bytes] = []  # commands asked in this turn of the event loop
        self._lost: BaseException | None = None

    @classmethod
    async def open(cls, url: str, give_up_after: float) -> RespConnection:
        """Connect, authenticate and select the database; each step and every reply later
        bounded by ``give_up_after`` seconds."""
        username, password = None, None
        master: tuple[str, int] | None = None
        if url.startswith("redis+sentinel://"):
            sentinel = SentinelUrl.parse(url)
            master = await cls._master(sentinel, give_up_after)
            protocol = await cls._tcp(give_up_after, *master)
            db, username, password = sentinel.db, sentinel.username, sentinel.password
        else:
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            if parts.scheme == "unix":
                protocol = cls(give_up_after)
                async with asyncio.timeout(give_up_after):
                    await asyncio.get_running_loop().create_unix_connection(lambda: protocol, unquote(parts.path))
                db = query.get("db", ["0"])[0]
            elif parts.scheme in ("redis", "rediss"):
                ca = query.get("ssl_ca_certs", [None])[0]
                context = ssl.create_default_context(cafile=ca) if parts.scheme == "rediss" else None
                protocol = await cls._tcp(give_up_after, parts.hostname or "localhost", parts.port or 6379, context)
                db = parts.path.strip("/") or query.get("db", ["0"])[0]
            else:
                raise ValueError(f"{parts.scheme}:// is not supported: {', '.join(s + '://' for s in SCHEMES)}")
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
        try:
            if password is not None:
                await protocol.call("AUTH", *([username] if username else []), password)
            if db != "0":
                await protocol.call("SELECT", db)
            if master is not None:
                role = await protocol.call("ROLE")
                if not (isinstance(role, list) and role and role[0] == b"master"):
                    raise StoreError(f"the sentinels name {master[0]}:{master[1]} as the master, but it is not (yet)")
        except BaseException:
            protocol.close()
            raise
        return protocol

    @classmethod
    async def _tcp(cls, give_up_after: float, host: str, port: int, context: ssl.SSLContext | None = None) -> RespConnection:
        """A connection to ``host:port`` made within ``give_up_after`` seconds."""
        protocol = cls(give_up_after)
        async with asyncio.timeout(give_up_after):
            await asyncio.get_running_loop().create_connection(lambda: protocol, host, port, ssl=context)
        return protocol

    @classmethod
    async def _master(cls, url: SentinelUrl, give_up_after: float) -> tuple[str, int]:
        """Where the sentinels say the master is: the first that answers is believed."""
        failures: list[str] = []
        for host, port in url.sentinels:
            sentinel: RespConnection | None = None
            try:
                sentinel = await cls._tcp(give_up_after, host, port)
                if url.sentinel_password is not None:
                    await sentinel.call("AUTH", url.sentinel_password)
                found = await sentinel.call("SENTINEL", "get-master-addr-by-name", url.service)
            except (OSError, StoreError) as exc:
                failures.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            finally:
                if sentinel is not None:
                    sentinel.close()
            match found:
                case [bytes() as address, bytes() as master_port] if master_port.isdigit():
                    return address.decode(), int(master_port)
            failures.append(f"{host}:{port}: no master named {url.service!r}")
        raise ConnectionError(f"no sentinel gave the master {url.service!r}: {'; '.join(failures)}")

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while self._waiting and (found := parse(buf, pos)) is not None:
                reply, pos = found
                future, _ = self._waiting.popleft()
                if future.done():  # given up on (cancelled)
                    continue
                if isinstance(reply, StoreError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (ValueError, StoreError, ConnectionError) as exc:
            self._fail(ConnectionError(f"bad reply from the state store: {exc}"))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the state store closed the connection"))

    # -- requests ----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._lost is None and self._transport is not None

    async def call(self, *args: bytes | str | int | float) -> Reply:
        """Send one command and wait for its reply (StoreError for an error reply)."""
        return await self.request(pack(*args))

    def request(self, command: bytes) -> asyncio.Future[Reply]:
        """Send one packed command; the future holds its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        if self._lost is not None or self._transport is None:
            future.set_exception(ConnectionError(f"state store connection lost: {self._lost}"))
            return future
        self._waiting.append((future, time.monotonic()))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._check)
        return future

    def _flush(self) -> None:
        """Everything asked since the last flush in one write (one read for the store)."""
        if self._transport is not None and self._lost is None:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _check(self) -> None:
        """The oldest request has waited ``timeout``: the store is too slow, give up on it."""
        self._timer = None
        if not self._waiting:
            return
        waited = time.monotonic() - self._waiting[0][1]
        if waited >= self.timeout:
            self._fail(TimeoutError(f"no reply from the state store in {self.timeout} s"))
        else:
            self._timer = asyncio.get_running_loop().call_later(self.timeout - waited, self._check)

    def _fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, OSError) else ConnectionError(str(exc))
        if self._lost is None:
            self._lost = error
            if self.on_lost is not None:
                self.on_lost(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(ConnectionError("closed"))
