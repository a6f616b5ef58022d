"""The namespace helpers themselves: a connection crosses the veth link from an extra source address."""

from tests.support.capture import Capture
from tests.support.netns import NetPair


def test_connect_across_pair_from_extra_address(netpair: NetPair) -> None:
    src = netpair.add_client_address("192.0.2.9")
    lsock = netpair.server.listen(netpair.server_v4, 2525)
    try:
        with Capture(netpair.server, netpair.server_if, "tcp port 2525") as cap:
            c = netpair.client.connect((netpair.server_v4, 2525), source=src)
            conn, peer = lsock.accept()
            assert peer[0] == src
            conn.close()
            c.close()
            cap.until(lambda segments: any(s.flags == "S" for s in segments), "the client's SYN")
        assert cap.segments[0].flags == "S" and cap.segments[0].src == src
    finally:
        lsock.close()
