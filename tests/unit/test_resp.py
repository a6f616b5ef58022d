"""The state store's wire protocol: replies split anywhere, matched to requests in order."""

from __future__ import annotations

import asyncio

import pytest

from netpolicy.smtp.resp import RespConnection, StoreError, pack, parse

REPLIES = [
    (b"+PONG\r\n", b"PONG"),
    (b":-3\r\n", -3),
    (b"$5\r\nab\r\nc\r\n", b"ab\r\nc"),  # a bulk string holding CRLF
    (b"$-1\r\n", None),
    (b"*2\r\n:1\r\n*2\r\n$1\r\nx\r\n:7\r\n", [1, [b"x", 7]]),
    (b"*0\r\n", []),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_a_reply_is_read_only_once_complete(wire: bytes, value: object) -> None:
    for cut in range(len(wire)):
        assert parse(wire[:cut], 0) is None, cut
    assert parse(wire + b":9\r\n", 0) == (value, len(wire))


def test_an_error_reply_is_an_error() -> None:
    found = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert found is not None and isinstance(found[0], StoreError)
    assert str(found[0]) == "NOSCRIPT No matching script"


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert pack(b"EVALSHA", "ab", 1, 0.5) == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$3\r\n0.5\r\n"


class Wire:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


async def test_replies_in_pieces_go_to_their_requests_in_order() -> None:
    connection = RespConnection(1.0)
    wire_out = Wire()
    connection.connection_made(wire_out)  # type: ignore[arg-type]
    first, second = connection.request(pack("PING")), connection.request(pack("GET", "k"))
    connection.request(pack("ZREM", "k", "m")).cancel()  # given up on: its reply still takes its place
    third = connection.request(pack("EVALSHA"))
    await asyncio.sleep(0)  # the end of this turn of the event loop
    assert wire_out.written == [pack("PING") + pack("GET", "k") + pack("ZREM", "k", "m") + pack("EVALSHA")]  # one write
    wire = b"+PONG\r\n$3\r\nabc\r\n:1\r\n-NOSCRIPT gone\r\n"
    for byte in range(len(wire)):
        connection.data_received(wire[byte:byte + 1])
    assert await first == b"PONG"
    assert await second == b"abc"
    with pytest.raises(StoreError, match="NOSCRIPT"):
        await third


async def test_a_silent_store_fails_every_request_after_the_timeout() -> None:
    connection = RespConnection(0.05)
    wire = Wire()
    connection.connection_made(wire)  # type: ignore[arg-type]
    waiting = [connection.request(pack("PING")) for _ in range(3)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert wire.aborted
    with pytest.raises(ConnectionError):
        await connection.request(pack("PING"))
