"""``FdWatch``: keep the SMTP listeners clear of the process' file descriptor limit.

``serve`` runs on uvloop, and libuv answers accept() failing with EMFILE/ENFILE by accepting
and closing every pending connection with a reserved descriptor, without telling the
application (measured: clients past the limit read EOF at once, no callback, no exception
handler call). Waiting for accept() to fail therefore means clients losing their connection
with nothing logged and nothing counted. Instead each new connection is checked against the
limit while there is still room: Linux gives a new socket the lowest free descriptor, so a
socket numbered ``n`` proves that ``n`` descriptors below it are in use. Past the high-water
mark (the soft limit less a sixteenth, at least 16 descriptors, kept for Maildir files,
next-hop connections and DNS sockets) the connection gets a 421 and is closed: the client
retries later, and the operator gets one log line per episode and a Prometheus counter.
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("netpolicy.smtp")


def soft_limit() -> int:
    """RLIMIT_NOFILE's soft limit, read each time (``prlimit`` can change it under us)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_fds() -> int:
    """Descriptors this process has open (one directory listing: read at scrape time only)."""
    return len(os.listdir("/proc/self/fd"))


def reserve(limit: int) -> int:
    """Descriptors kept free for what sessions open besides their own socket."""
    return max(16, limit // 16)


class FdWatch:
    """Admission by descriptor number, with one log line when shortage starts and one when it ends."""

    def __init__(self) -> None:
        self.refused = 0  # connections answered 421 for want of descriptors
        self.episodes = 0
        self.short = False
        self._refused_in_episode = 0

    def admit(self, fd: int) -> bool:
        """False when the connection on descriptor ``fd`` must be turned away."""
        limit = soft_limit()
        high = limit - reserve(limit)
        if fd >= high:
            self.refused += 1
            self._refused_in_episode += 1
            if not self.short:
                self.short = True
                self.episodes += 1
                log.warning(
                    "running short of file descriptors: connection on fd %d, soft limit %d; "
                    "new connections get 421 until descriptors are free (raise LimitNOFILE?)", fd, limit,
                )
            return False
        if self.short and fd < high - reserve(limit):
            self.short = False
            log.warning("file descriptors available again (fd %d of %d); %d connections were refused",
                        fd, limit, self._refused_in_episode)
            self._refused_in_episode = 0
        return True
