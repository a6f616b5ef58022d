"""Reading the kernel's NFLOG group: one event per refused SYN, for verbose connection logging.

The nftables rule that refuses a listener's blocked hosts also logs (rate-limited) to an NFLOG
group; this module binds that group on a raw ``NETLINK_NETFILTER`` socket and yields the source
address and the rule's prefix of each logged packet. Reading netlink directly avoids both
polling dmesg and a C binding (libnetfilter_log) that Debian's Python does not ship; the wire
format is small and stable (linux/netfilter/nfnetlink_log.h).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
_NLA_TYPE_MASK = 0x3FFF
_COPY_BYTES = 64  # enough for an IPv6 header plus the TCP ports


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    source: str


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _config_message(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return header + body


def _attributes(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs[kind & _NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def _source_of(payload: bytes) -> str | None:
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        return str(ipaddress.IPv4Address(payload[12:16]))
    if version == 6 and len(payload) >= 40:
        return str(ipaddress.IPv6Address(payload[8:24]))
    return None


def parse_messages(data: bytes) -> list[LoggedPacket]:
    """Every NFULNL packet message in one netlink datagram."""
    out: list[LoggedPacket] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = _attributes(data[offset + 20 : offset + length])  # after nlmsghdr + nfgenmsg
            source = _source_of(attrs.get(NFULA_PAYLOAD, b""))
            if source is not None:
                prefix = attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode(errors="replace")
                out.append(LoggedPacket(prefix, source))
        offset += (length + 3) & ~3
    return out


class NflogReader:
    """Bound to one NFLOG group; ``async for packet in reader`` yields logged packets."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._request(_nla(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)), seq=1)
        mode = struct.pack("!IBB", _COPY_BYTES, NFULNL_COPY_PACKET, 0)
        self._request(_nla(NFULA_CFG_MODE, mode), seq=2)
        self.sock.setblocking(False)

    def _request(self, attrs: bytes, seq: int) -> None:
        """Send one config message and raise if the kernel refuses it (e.g. group taken)."""
        self.sock.send(_config_message(self.group, attrs, seq))
        reply = self.sock.recv(4096)
        _length, kind = struct.unpack_from("=IH", reply, 0)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", reply, 16)
            if error != 0:
                raise OSError(-error, f"NFLOG group {self.group}: {socket.errno.errorcode.get(-error, error)}")  # type: ignore[attr-defined]

    async def __aiter__(self) -> AsyncIterator[LoggedPacket]:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            for packet in parse_messages(data):
                yield packet

    def close(self) -> None:
        self.sock.close()
