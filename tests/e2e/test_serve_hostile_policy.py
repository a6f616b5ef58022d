"""``netpolicy serve`` given hostile policy files by its file watcher: banners keep flowing, each
file is refused with a ``file:line`` log line, and the watcher still picks up the next good file.

Runs the real daemon in a namespace through the ``served`` fixture (tests/support/serve.py). Expanded on the event
loop, the alias bomb here (396 bytes, 4.8M strings) holds it for about 10 s and 1.2 GB; a loader
that raises on the NUL byte ends the watcher for good.
"""

from __future__ import annotations

import socket
import time

from tests.support.serve import Served
from tests.support.serve_policy import ACCEPTED, BLOCKED, LATER, PORT
from tests.support.wait import wait_until

BANNER_WITHIN = 1.0


def alias_bomb(levels: int = 7, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def banner_seconds(s: Served) -> float:
    """Seconds from connect to the first reply line for a client the policy accepts."""
    started = time.monotonic()
    with s.pair.client.connect((s.pair.server_v4, PORT), source=ACCEPTED, timeout=5) as sock:
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(512)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"220"), data
    return time.monotonic() - started


def test_alias_bomb_is_refused_while_banners_flow_and_the_watcher_lives(served: Served) -> None:
    good = served.policy.read_text()
    served.write_policy(text=alias_bomb())
    # Probe from the write until five banners after the refusal was logged.
    banners: list[tuple[float, bool]] = []  # (seconds to the banner, refusal logged by then)

    def five_banners_after_the_refusal() -> bool:
        banners.append((banner_seconds(served), "aliases (*name) are not supported" in served.stderr_text()))
        return sum(refused for _, refused in banners) >= 5

    wait_until(five_banners_after_the_refusal, "the alias bomb's refusal and five banners after it", step=0)
    slowest = max(seconds for seconds, _ in banners)
    assert slowest < BANNER_WITHIN, f"a banner took {slowest:.2f} s during the reload"
    assert f"refused, policy unchanged: {served.policy}:1: anchors (&name) and aliases (*name)" in served.stderr_text()

    # A NUL byte: a loader that raises on it would end the watcher.
    served.write_policy(text=good.replace("mx.example.test", "mx.ex\0ample.test"))
    wait_until(lambda: f"{served.policy}:" in served.stderr_text() and "character U+0000 is not allowed" in served.stderr_text(),
               "the NUL byte's file:line log line")
    assert served.outcome(BLOCKED) == "refused" and served.outcome(LATER) == "220"

    # A valid, changed policy: the watcher (no SIGHUP) picks it up.
    served.write_policy(blacklist=f"{BLOCKED}, 198.51.100.0/24")
    wait_until(lambda: served.outcome(LATER, timeout=0.5) == "refused", "the watcher to apply the changed policy")
    assert "Traceback" not in served.stderr_text()
