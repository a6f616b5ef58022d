"""Shared pieces of the SMTP end-to-end tests: a policy, a listener in a namespace, clients.

The listener runs in the test's event loop but serves a socket living in the server namespace;
clients connect from the client namespace, from source addresses that put them in different
sender groups. Outgoing hand-offs (next hop) leave from the test process, i.e. the host's
namespace, so next hops listen on the host's loopback.
"""

from __future__ import annotations

import asyncio
import copy
import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from netpolicy.model import Policy, parse_policy
from netpolicy.model.entries import AnswerPattern
from netpolicy.model.hat import Decision, Fact, HatIndex, build_hat_indexes
from netpolicy.smtp import InMemoryCounters, SessionLimits, SmtpListener
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.scanner import RspamdClient
from tests.support.netns import Netns, NetPair, net_pair

PORT = 2525

# Client source addresses and the group each lands in.
RELAY = "192.0.2.10"  # RELAYLIST -> RELAYED (relay: no RAT)
TRUSTED = "192.0.2.20"  # WHITELIST -> TRUSTED (custom banner)
BLOCKED = "192.0.2.66"  # BLACKLIST -> tcprefuse
REJECTED = "192.0.2.77"  # REJECTLIST -> reject
THROTTLED = "192.0.2.88"  # SUSPECTLIST -> tight limits
HARVESTER = "198.51.100.5"  # DHAPLIST -> dhap_limit 2
PLAIN = "198.51.100.9"  # ALL -> accept
LISTED = "198.51.100.33"  # in dnslist[bl.example.test] -> SUSPECTLIST
SPAMMY = "198.51.100.44"  # PTR mx1.spam.example -> REJECTLIST by host name
CLIENT_ADDRESSES = (RELAY, TRUSTED, BLOCKED, REJECTED, THROTTLED, HARVESTER, PLAIN, LISTED, SPAMMY)

BASE_POLICY: dict[str, Any] = {
    "version": 1,
    "listeners": [{
        "name": "Inbound",
        "type": "public",
        "address": "127.0.0.1",  # replaced by the namespace address
        "port": PORT,
        "hostname": "mx.example.test",
        "kernel": False,
        "hat": [
            {"group": "RELAYLIST", "policy": "RELAYED"},
            {"group": "WHITELIST", "policy": "TRUSTED"},
            {"group": "BLACKLIST", "policy": "BLOCKED"},
            {"group": "REJECTLIST", "policy": "REJECTED"},
            {"group": "SUSPECTLIST", "policy": "THROTTLED"},
            {"group": "DHAPLIST", "policy": "HARVEST"},
            {"group": "ALL", "policy": "ACCEPTED"},
        ],
        "rat": [
            {"recipient": "example.test", "action": "accept"},
            {"recipient": ".example.test", "action": "accept"},
            {"recipient": "postmaster@other.test", "action": "accept"},
            {"recipient": "ALL", "action": "reject"},
        ],
        "defaults": {"max_msgs_per_session": 1000, "max_rcpts_per_msg": 1000, "max_message_size": 1048576, "max_concurrency": 50},
        "delivery": {"maildir": "var/maildir"},
    }],
    "sender_groups": {
        "RELAYLIST": [RELAY],
        "WHITELIST": [TRUSTED],
        "BLACKLIST": [BLOCKED],
        "REJECTLIST": [REJECTED, ".spam.example"],
        "SUSPECTLIST": [THROTTLED, "dnslist[bl.example.test]"],
        "DHAPLIST": [HARVESTER],
    },
    "mail_flow_policies": {
        "ACCEPTED": {"behavior": "accept"},
        "TRUSTED": {"behavior": "accept", "smtp_banner_text": "$Hostname welcomes $RemoteIP ($Group/$Policy)"},
        "THROTTLED": {"behavior": "accept", "max_msgs_per_session": 3, "max_rcpts_per_msg": 3,
                      "max_message_size": 4096, "max_concurrency": 2, "max_rcpts_per_hour": 5},
        "HARVEST": {"behavior": "accept", "dhap_limit": 2, "dhap_text": "Too many invalid recipients from $RemoteIP"},
        "BLOCKED": {"behavior": "tcprefuse"},
        "REJECTED": {"behavior": "reject", "reject_banner_code": 554, "reject_banner_text": "$RemoteIP is not welcome here"},
        "RELAYED": {"behavior": "relay"},
    },
}


def policy_dict(address: str, maildir: str, **listener: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_POLICY)
    data["listeners"][0].update({"address": address, "delivery": {"maildir": maildir}, **listener})
    return data


def build(data: dict[str, Any]) -> tuple[Policy, HatIndex]:
    policy = parse_policy(yaml.safe_dump(data), "test-policy.yml")
    return policy, build_hat_indexes(policy)["Inbound"]


class FakeResolver:
    """Verified PTR names and DNS-list listings given up front: there is no DNS here."""

    def __init__(self, names: dict[str, str] | None = None, listed: set[tuple[str, str]] | None = None) -> None:
        self.names = names if names is not None else {SPAMMY: "mx1.spam.example"}
        self.listed = listed if listed is not None else {(LISTED, "bl.example.test")}

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        return Fact(self.names.get(address), 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> Fact[bool]:
        return Fact((address, zone) in self.listed, 300.0)


@dataclass(frozen=True)
class Answer:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RawClient:
    """A line-level SMTP client over a socket from the client namespace: exact bytes in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, ns: Netns, dest: tuple[str, int], source: str | None = None) -> "RawClient":
        sock = ns.connect(dest, source=source)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    async def answer(self, timeout: float = 5.0) -> Answer:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"connection closed after {lines!r}")
            text = raw.decode().rstrip("\r\n")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Answer(int(text[:3]), lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> Answer:
        await self.send(line.encode() + b"\r\n")
        return await self.answer()

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    async def envelope(self, sender: str = "a@sender.test", *rcpts: str) -> None:
        """EHLO, MAIL and RCPTs that are all expected to succeed."""
        for line in ("EHLO client.test", f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in rcpts)):
            answer = await self.cmd(line)
            assert answer.code == 250, f"{line}: {answer}"

    async def message(self, body: bytes = b"Subject: test\r\n\r\nhello\r\n") -> Answer:
        answer = await self.cmd("DATA")
        assert answer.code == 354, answer
        await self.send(body + b".\r\n")
        return await self.answer()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class SmtpEnv:
    """A listener on the server side of ``pair`` under ``policy`` (a dict, see BASE_POLICY)."""

    pair: NetPair
    maildir: str
    data: dict[str, Any]
    resolver: FakeResolver = field(default_factory=FakeResolver)
    limits: SessionLimits = field(default_factory=SessionLimits)
    offences: list[tuple[str, str, str]] = field(default_factory=list)
    log: io.StringIO = field(default_factory=io.StringIO)
    counters: InMemoryCounters = field(default_factory=InMemoryCounters)
    listener: SmtpListener | None = None
    scanner: RspamdClient = field(default_factory=RspamdClient)  # the policy's scanner block, if it has one

    async def __aenter__(self) -> "SmtpEnv":
        policy, hat = build(self.data)
        self.scanner.settings = policy.scanner
        sock = self.pair.server.listen(self.pair.server_v4, PORT)
        self.listener = SmtpListener(
            policy.listener("Inbound"), hat, self.resolver, MailLog(stream=self.log),
            counters=self.counters, on_offence=self._offence, limits=self.limits, scanner=self.scanner,
        )
        await self.listener.start(sock=sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.listener is not None
        await self.listener.stop(grace=0.1)
        await self.scanner.close()

    def _offence(self, address: str, decision: Decision, kind: str) -> None:
        self.offences.append((address, decision.sender_group, kind))

    async def client(self, source: str | None = None, banner: int | None = 220) -> RawClient:
        client = await RawClient.open(self.pair.client, (self.pair.server_v4, PORT), source)
        if banner is not None:
            answer = await client.answer()
            assert answer.code == banner, answer
        return client

    def stored(self) -> list[str]:
        new = os.path.join(self.maildir, "new")
        return sorted(os.listdir(new)) if os.path.isdir(new) else []

    def log_lines(self, pattern: str = "") -> list[str]:
        return [line for line in self.log.getvalue().splitlines() if re.search(pattern, line)]


@pytest.fixture(scope="module")
def smtp_pair() -> Iterator[NetPair]:
    """One namespace pair per test module (creating one costs about a second)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not shutil.which("ip"):
        pytest.skip("iproute2 is not installed")
    with net_pair() as pair:
        for address in CLIENT_ADDRESSES:
            pair.add_client_address(address)
        yield pair


def env(pair: NetPair, tmp_path: Any, **listener: Any) -> SmtpEnv:
    maildir = str(tmp_path / "maildir")
    return SmtpEnv(pair, maildir, policy_dict(pair.server_v4, maildir, **listener))
