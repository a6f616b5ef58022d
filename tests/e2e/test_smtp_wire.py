"""SPEC.md section 1 on the wire: what a packet capture shows for REJECT and userland TCPREFUSE."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.support.capture import Capture, Segment
from tests.support.netns import NetPair
from tests.support.smtp import BLOCKED, PORT, REJECTED, env, smtp_pair
from tests.support.wait import wait_until_async

__all__ = ["smtp_pair"]


def _flags(segments: list[Segment], server: str) -> list[tuple[str, str]]:
    """(side, flags) per segment: side is "s" for the server, "c" for the client."""
    return [("s" if s.src == server else "c", s.flags) for s in segments]


async def test_reject_conversation(smtp_pair: NetPair, tmp_path: Path) -> None:
    server = smtp_pair.server_v4
    async with env(smtp_pair, tmp_path) as e:
        with Capture(smtp_pair.server, smtp_pair.server_if, f"tcp port {PORT}") as cap:
            client = await e.client(REJECTED, banner=554)
            assert await client.at_eof()
            await client.close()
            await wait_until_async(lambda: e.log_lines("ICID 1 close"), "the listener's close log line")
            await asyncio.to_thread(cap.until, lambda segments: any(s.src != server and "F" in s.flags for s in segments),
                                    "the client's FIN")
    segments = cap.segments
    flags = _flags(segments, server)
    assert flags[:3] == [("c", "S"), ("s", "SA"), ("c", "A")]
    banner = [s for s in segments if s.src == server and s.payload]
    assert len(banner) == 1 and banner[0].payload.startswith(b"554 ")
    server_fin = next(i for i, (side, f) in enumerate(flags) if side == "s" and "F" in f)
    client_fin = next(i for i, (side, f) in enumerate(flags) if side == "c" and "F" in f)
    assert segments.index(banner[0]) <= server_fin < client_fin
    assert not any("R" in f for _, f in flags), flags


async def test_userland_tcprefuse_conversation(smtp_pair: NetPair, tmp_path: Path) -> None:
    server = smtp_pair.server_v4
    async with env(smtp_pair, tmp_path) as e:
        with Capture(smtp_pair.server, smtp_pair.server_if, f"tcp port {PORT}") as cap:
            sock = smtp_pair.client.connect((server, PORT), source=BLOCKED)  # the handshake completes
            try:
                with pytest.raises(ConnectionResetError):
                    data = await asyncio.to_thread(sock.recv, 100)
                    raise AssertionError(f"got {data!r} instead of a reset")
            finally:
                sock.close()
            await asyncio.to_thread(cap.until, lambda segments: any(s.src == server and "R" in s.flags for s in segments),
                                    "the server's RST")
        assert e.log_lines(f"^ICID 1 TCPREFUSE SG BLACKLIST match {BLOCKED}$")
    flags = _flags(cap.segments, server)
    assert flags[:3] == [("c", "S"), ("s", "SA"), ("c", "A")]
    assert [f for side, f in flags[3:] if side == "s"] in (["RA"], ["R"]), flags
    assert not any(s.payload for s in cap.segments if s.src == server)


def test_tcprefuse_socket_option_is_linger_zero() -> None:
    """Closing with SO_LINGER {on, 0} is what makes the kernel send RST instead of FIN."""
    from netpolicy.smtp.session import _LINGER_ZERO

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == _LINGER_ZERO
