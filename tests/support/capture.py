"""Packet captures inside a test's namespace: tcpdump writes a pcap, scapy reads it back.

Used to show the TCP conversations of SPEC.md section 1 (handshake then banner and FIN for
REJECT; RST-ACK answering the SYN for kernel TCPREFUSE; handshake then RST for userland).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from scapy.error import Scapy_Exception
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from tests.support.netns import Netns
from tests.support.wait import wait_until


@dataclass(frozen=True)
class Segment:
    """One TCP segment as seen on the wire."""

    src: str
    sport: int
    dst: str
    dport: int
    flags: str  # scapy's letters, e.g. "S", "SA", "A", "PA", "FA", "RA"
    payload: bytes

    def __str__(self) -> str:
        data = f" {self.payload[:40]!r}" if self.payload else ""
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport} [{self.flags}]{data}"


class Capture:
    """``with Capture(ns, iface, "tcp port 25") as cap: ...`` then ``cap.segments``.

    A segment the peer already received may not be written yet when the test leaves the
    ``with`` block, and stopping tcpdump does not wait for it: before leaving, wait with
    ``cap.until`` for the last segment the test looks at.
    """

    def __init__(self, ns: Netns, iface: str, bpf: str) -> None:
        self.ns, self.iface, self.bpf = ns, iface, bpf
        self.path = os.path.join(tempfile.mkdtemp(prefix="npcap"), "cap.pcap")
        self.segments: list[Segment] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Capture":
        self._proc = self.ns.popen(
            ["tcpdump", "-Z", "root", "-i", self.iface, "--immediate-mode", "-U", "-n", "-w", self.path, self.bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # tcpdump says "listening on" once the capture is armed.
        stderr = self._proc.stderr
        assert stderr is not None
        wait_until(lambda: b"listening on" in stderr.readline(), "tcpdump to arm the capture")
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(timeout=5)
        self.segments = read_segments(self.path)

    def until(self, predicate: Callable[[list[Segment]], bool], what: str, timeout: float = 5.0) -> list[Segment]:
        """The segments written so far, once ``predicate`` holds for them (tcpdump -U writes
        each packet as it comes, so the file can be read while the capture runs)."""
        def seen() -> list[Segment]:
            segments = read_segments(self.path)
            return segments if predicate(segments) else []

        return wait_until(seen, what, timeout=timeout, ignoring=(Scapy_Exception,))

    def conversation(self, port: int) -> list[Segment]:
        """Segments of the connection(s) with this client-side port."""
        return [s for s in self.segments if port in (s.sport, s.dport)]


def read_segments(path: str) -> list[Segment]:
    out: list[Segment] = []
    for pkt in rdpcap(path):
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        tcp = pkt.getlayer(TCP)
        if ip is None or tcp is None:
            continue
        out.append(Segment(ip.src, tcp.sport, ip.dst, tcp.dport, str(tcp.flags), bytes(tcp.payload)))
    return out
