"""The fleet view: each serve announces itself in the state store; ``status --fleet`` reads them.

Every ``HEARTBEAT`` seconds, and at once after a reload, serve writes ``<prefix>gateway:<host>:<pid>``
(JSON: host name, pid, listeners with address:port, policy generation, started, last seen, the
SMTP workers of ``serve --workers``) to
expire after ``EXPIRES`` heartbeats: a gateway that dies or loses the store drops out of the view
within 15 s, and one that stops deletes its key. A key per gateway rather than one hash of all:
the expiry is per key, so a dead gateway's entry needs nobody to remove it.

A gateway disagrees (``flags``) when its generation is not that of this host's policy file, or,
when one generation is run by more than half of the gateways, not that one; the flag says which.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from netpolicy.model.policy import State
from netpolicy.smtp.redis_counters import RedisStore
from netpolicy.smtp.resp import RespConnection, pack

HEARTBEAT = 5.0  # seconds between announcements
EXPIRES = 3  # heartbeats a gateway's entry outlives its last one
TIMEOUT = 2.0  # seconds status waits for the store


@dataclass(frozen=True)
class Gateway:
    host: str
    pid: int
    listeners: list[str]  # "name address:port"
    generation: str
    started: float  # Unix time
    last_seen: float  # Unix time of the last heartbeat (the gateway's clock)
    workers: list[dict[str, Any]] = field(default_factory=list)  # serve --workers: pid, generation, ... of each

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


def gateway_key(prefix: str, host: str, pid: int) -> str:
    return f"{prefix}gateway:{host}:{pid}"


async def announce(store: RedisStore, gateway: Gateway) -> bool:
    """Write ``gateway``'s entry; False when the store is not there to take it."""
    if store.state is None:
        return False
    ms = math.ceil(HEARTBEAT * EXPIRES * 1000)
    reply = await store.call(pack(b"SET", gateway_key(store.prefix, gateway.host, gateway.pid), json.dumps(asdict(gateway)),
                                  b"PX", ms))
    return reply is not None


async def withdraw(store: RedisStore, host: str, pid: int) -> None:
    """A gateway that stops leaves the view at once."""
    if store.state is not None:
        await store.call(pack(b"DEL", gateway_key(store.prefix, host, pid)))


async def read_fleet(state: State) -> list[Gateway]:
    """Every gateway announced under ``state``'s prefix, by host and pid (raises OSError or
    StoreError when the store cannot be read)."""
    connection = await RespConnection.open(state.redis, TIMEOUT)
    try:
        keys: list[bytes] = []
        cursor: bytes = b"0"
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in f"{state.prefix}gateway:") + "*"
        while True:
            match await connection.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000):
                case [bytes() as cursor, list() as batch]:
                    keys.extend(k for k in batch if isinstance(k, bytes))
                case reply:
                    raise OSError(f"unexpected SCAN reply from the state store: {reply!r}")
            if cursor == b"0":
                break
        found: list[Gateway] = []
        for value in [connection.request(pack(b"GET", key)) for key in keys]:
            data = await value
            if isinstance(data, bytes):
                try:
                    found.append(Gateway(**json.loads(data)))
                except (ValueError, TypeError):
                    continue
        return sorted(found, key=lambda g: (g.host, g.pid))
    finally:
        connection.close()


def majority(gateways: list[Gateway]) -> str | None:
    """The generation more than half of the gateways run, if there is one."""
    if not gateways:
        return None
    generation, n = Counter(g.generation for g in gateways).most_common(1)[0]
    return generation if 2 * n > len(gateways) else None


def flags(gateways: list[Gateway], local: str | None) -> dict[str, str]:
    """Gateway name -> why it disagrees: another generation than this host's policy file
    (``local``) or than the majority."""
    most = majority(gateways)
    found: dict[str, str] = {}
    for g in gateways:
        why = []
        if local is not None and g.generation != local:
            why.append(f"this host's policy file is at {local}")
        if most is not None and g.generation != most:
            why.append(f"the majority runs {most}")
        if why:
            found[g.name] = f"runs generation {g.generation}, but " + " and ".join(why)
    return found
