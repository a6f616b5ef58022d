"""Packet captures inside a test's namespace: tcpdump writes a pcap, scapy reads it back.

Used to show the TCP conversations of SPEC.md section 1 (handshake then banner and FIN for
REJECT; RST-ACK answering the SYN for kernel TCPREFUSE; handshake then RST for userland).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from tests.support.netns import Netns


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
    """``with Capture(ns, iface, "tcp port 25") as cap: ...`` then ``cap.segments``."""

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
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 5
        line = b""
        while b"listening on" not in line and time.monotonic() < deadline:
            line = self._proc.stderr.readline()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None
        time.sleep(0.2)  # let the last segments land
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(timeout=5)
        self.segments = read_segments(self.path)

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
