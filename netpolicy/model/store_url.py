"""State store URLs (SPEC.md section 10): checked when the policy loads, taken apart for the client.

A URL the client could not use must be a ``file:line`` error of the policy, not an exception in
a running serve: ``check_store_url`` is the policy's validator, ``SentinelUrl`` what the client
(``netpolicy.smtp.resp``) connects with.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_PORT = 26379


def check_store_url(url: str) -> str:
    """``url`` if the client can use it; ValueError saying what is wrong."""
    if url.startswith("redis+sentinel://"):
        SentinelUrl.parse(url)
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url}: the socket's path is missing (unix:///run/redis/redis.sock)")
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        if not parts.hostname:
            raise ValueError(f"{url}: the host is missing (redis://host:6379/0)")
        try:
            parts.port  # noqa: B018 (urlsplit checks the port when it is asked for)
        except ValueError as exc:
            raise ValueError(f"{url}: {exc}") from None
        db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    if not db.isdigit():
        raise ValueError(f"{url}: the database must be a number, not {db!r}")
    return url


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL taken apart (``urlsplit`` cannot: several hosts, one port each)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: str
    username: str | None
    password: str | None
    sentinel_password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Raises ValueError naming what is wrong."""
        rest = url.removeprefix("redis+sentinel://")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username, password = (unquote(user) or None, unquote(secret)) if colon else (None, unquote(user))
        sentinels = tuple(_host_port(item, SENTINEL_PORT) for item in hosts.split(","))
        service, _, db = path.partition("/")
        if not service:
            raise ValueError(f"{url}: the master's service name is missing (redis+sentinel://host:26379/mymaster/0)")
        if db and not db.isdigit():
            raise ValueError(f"{url}: the database must be a number, not {db!r}")
        sentinel_password = parse_qs(query).get("sentinel_password", [None])[0]
        return cls(sentinels, unquote(service), db or "0", username, password, sentinel_password)


def _host_port(item: str, default: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    host, port = item, ""
    if item.startswith("["):
        host, _, tail = item[1:].partition("]")
        port = tail.removeprefix(":")
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"not a sentinel address: {item!r} (host:port)")
    return host, int(port) if port else default
