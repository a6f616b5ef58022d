"""Many netlink datagrams per system call: ``recvmmsg(2)`` through ctypes.

Why: the kernel answers a get naming many set elements with one datagram per element, and
proving a 1M-interval set takes 2M of them (``nftmsg.interval_lookups``). One ``recv`` each
took 4.3 s of a 14 s check (profiled on the loaded project machine); ``recvmmsg`` fills up to
``slots`` datagrams per call. Python's socket module does not offer it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket

MSG_WAITFORONE = 0x10000
MSG_TRUNC = 0x20


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_FLAGS_AT = _Mmsghdr.hdr.offset + _Msghdr.flags.offset


class Receiver:
    """Up to ``slots`` datagrams of at most ``size`` bytes per ``receive`` from ``sock``; a
    datagram ``i`` is ``view[i * size : i * size + lengths[i]]``, cut short when ``flags[i]``
    has MSG_TRUNC (``lengths`` and ``flags`` index the kernel's per-datagram fields in place)."""

    def __init__(self, sock: socket.socket, slots: int = 256, size: int = 512) -> None:
        self.sock, self.slots, self.size = sock, slots, size
        self._buf = ctypes.create_string_buffer(slots * size)
        self.view = memoryview(self._buf).cast("B")
        self._iov = (_Iovec * slots)()
        self._msgs = (_Mmsghdr * slots)()
        base = ctypes.addressof(self._buf)
        for i in range(slots):
            self._iov[i].base, self._iov[i].len = base + i * size, size
            self._msgs[i].hdr.iov, self._msgs[i].hdr.iovlen = ctypes.addressof(self._iov[i]), 1
        stride = ctypes.sizeof(_Mmsghdr)
        assert stride % 4 == 0 and _FLAGS_AT % 4 == 0 and _Mmsghdr.len.offset % 4 == 0
        words = memoryview(self._msgs).cast("B")
        self.lengths = words.cast("I")[_Mmsghdr.len.offset // 4 :: stride // 4]
        self.flags = words.cast("i")[_FLAGS_AT // 4 :: stride // 4]

    def receive(self, timeout: float) -> int:
        """How many datagrams arrived (at least one); waits up to ``timeout`` seconds."""
        fd = self.sock.fileno()
        while True:
            count: int = _recvmmsg(fd, ctypes.addressof(self._msgs), self.slots, MSG_WAITFORONE, None)
            if count > 0:
                return count
            err = ctypes.get_errno()
            if count == 0 or err == errno.EINTR:
                continue
            if err not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise OSError(err, os.strerror(err))
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(timeout * 1000):
                raise TimeoutError("no answer from the kernel")
