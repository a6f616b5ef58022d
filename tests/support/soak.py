"""A soak with faults through ``netpolicy serve`` to a real Postfix (issue 14 item 3).

Every message carries a unique token and is sent once, one per connection, by ``sessions``
concurrent clients from the client namespace. Meanwhile, at set fractions of the run, the next
hop is killed (SIGKILL of master and every daemon) and started again, made slow (its smtpd
processes stopped with SIGSTOP for less than serve's hop timeout, then continued), and serve is
restarted (SIGTERM: its listeners drain) and crashed (SIGKILL) and started again.

Afterwards every token is counted in Postfix's hold queue (a ``static:HOLD`` data restriction
keeps each accepted message there, complete, as a file). The contract: every message whose
client heard 250 is there exactly once (``lost`` and ``duplicated`` are 0); every other message
the client still has (it heard 4xx or lost the connection), and ``held_unacknowledged`` counts
those the hop nonetheless queued: the copies a retry would duplicate (RFC 1047's window, open
while a reply is on its way back).

Used by tests/e2e/test_postfix_soak.py (2,000 messages) and bench/soak_postfix.py (20,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from tests.support.netns import NetPair
from tests.support.postfix import Postfix, postfix_instance
from tests.support.serve import Served
from tests.support.serve_policy import PORT

SOURCE = "192.0.2.99"
HOP_PORT = 10025
HOP_TIMEOUT = 10  # serve's delivery timeout: the slow hop stays under it
STALL = 3.0  # seconds the hop's smtpd processes stay stopped
POLICY = """\
version: 1
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    kernel: false
    hat:
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: example.test, action: accept}}
      - {{recipient: ALL, action: reject}}
    defaults: {{max_concurrency: 1000, max_msgs_per_session: 1000}}
    delivery: {{next_hop: '127.0.0.1:{hop_port}', timeout: {timeout}}}
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
"""
HOP_SETTINGS = {
    "smtpd_authorized_xclient_hosts": "127.0.0.1",
    "smtpd_data_restrictions": "check_client_access static:HOLD",
    "default_process_limit": "200",
}


@dataclass
class Figures:
    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "250", "4xx", "5xx", "dropped"
    refused_connects: int = 0  # connections refused while serve was down (tried again)
    faults: list[tuple[str, float]] = field(default_factory=list)  # (fault, seconds it took)
    lost: int = 0  # heard 250, not in the queue
    duplicated: int = 0  # in the queue more than once
    held_unacknowledged: int = 0  # in the queue, the client did not hear 250
    seconds: float = 0.0

    def report(self) -> str:
        o = self.outcomes
        faults = ", ".join(f"{name} {took:.1f} s" for name, took in self.faults)
        return (f"messages {self.messages}, 250s {o['250']}, 4xx {o['4xx']}, 5xx {o['5xx']}, dropped {o['dropped']}, "
                f"connections refused and tried again {self.refused_connects}, "
                f"lost {self.lost}, duplicated {self.duplicated}, queued without 250 {self.held_unacknowledged} "
                f"in {self.seconds:.0f} s ({self.messages / self.seconds:.0f} msg/s); faults: {faults}")


@contextlib.contextmanager
def soak_setup(pair: NetPair, workdir: Path) -> Iterator[tuple[Served, Postfix]]:
    """serve in ``pair.server`` relaying to a private Postfix in the same namespace."""
    pair.add_client_address(SOURCE)
    with postfix_instance(HOP_PORT, ns=pair.server, settings=HOP_SETTINGS) as hop:
        served = Served(pair, workdir)
        served.write_policy(text=POLICY.format(address=pair.server_v4, port=PORT, hop_port=HOP_PORT, timeout=HOP_TIMEOUT))
        served.start()
        try:
            yield served, hop
        finally:
            served.stop()


class Soak:
    def __init__(self, pair: NetPair, served: Served, hop: Postfix, messages: int, sessions: int) -> None:
        self.pair, self.served, self.hop = pair, served, hop
        self.figures = Figures(messages=messages)
        self.sessions = sessions
        self.run_id = uuid.uuid4().hex[:8]
        self.acknowledged: set[int] = set()
        self.done = 0
        self.progress = asyncio.Condition()

    def token(self, n: int) -> str:
        return f"soak-{self.run_id}-{n}-end"

    async def send(self, n: int) -> str:
        """One message on its own connection; its outcome."""
        loop = asyncio.get_running_loop()
        while True:
            sock = self.pair.client.socket()
            sock.setblocking(False)
            sock.bind((SOURCE, 0))
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (self.pair.server_v4, PORT)), 10)
                break
            except ConnectionRefusedError:
                # serve is down: nothing was sent, so the client may try again at once
                # without any risk of a duplicate; it backs off a little, as an MTA would.
                sock.close()
                self.figures.refused_connects += 1
                await asyncio.sleep(0.2)
            except (OSError, TimeoutError):
                sock.close()
                return "dropped"
        client = aiosmtplib.SMTP(sock=sock, start_tls=False, local_hostname="client.test", timeout=60)
        # 2-64 KB: a hop killed mid-DATA must be as likely as one killed between commands.
        filler = ("x" * 76 + "\r\n") * (25 * (1 + n % 32))
        body = f"Subject: soak {n}\r\nMessage-ID: <{self.token(n)}@client.test>\r\n\r\n{filler}{self.token(n)}\r\n"
        try:
            await client.connect()
            await client.sendmail("soak@sender.test", [f"r{n % 50}@example.test"], body.encode())
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
            return "250"
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _code_class(exc.recipients[0].code)
        except aiosmtplib.SMTPResponseException as exc:
            return _code_class(exc.code)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return "dropped"
        finally:
            client.close()
            sock.close()

    async def worker(self, todo: asyncio.Queue[int]) -> None:
        while True:
            try:
                n = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            outcome = await self.send(n)
            self.figures.outcomes[outcome] += 1
            if outcome == "250":
                self.acknowledged.add(n)
            async with self.progress:
                self.done += 1
                self.progress.notify_all()

    async def faults(self) -> None:
        schedule: list[tuple[float, str, Callable[[], None]]] = [
            (0.10, "hop killed and restarted", self.kill_hop),
            (0.25, "hop stalled", self.stall_hop),
            (0.40, "hop killed and restarted", self.kill_hop),
            (0.55, "serve restarted", lambda: self.restart_serve(signal.SIGTERM)),
            (0.70, "hop killed and restarted", self.kill_hop),
            (0.85, "serve crashed and restarted", lambda: self.restart_serve(signal.SIGKILL)),
        ]
        for fraction, name, action in schedule:
            async with self.progress:
                await self.progress.wait_for(lambda: self.done >= fraction * self.figures.messages)
            started = time.monotonic()
            await asyncio.to_thread(action)
            self.figures.faults.append((name, time.monotonic() - started))

    def kill_hop(self) -> None:
        self.hop.kill()
        self.hop.start()

    def stall_hop(self) -> None:
        stopped = self.hop.daemons("smtpd")
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(STALL)  # the fault itself: a hop that answers nothing for STALL seconds
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart_serve(self, how: signal.Signals) -> None:
        if how == signal.SIGKILL:
            self.served.proc.kill()
            self.served.proc.wait()
        self.served.stop()
        self.served.start()

    async def run(self) -> Figures:
        todo: asyncio.Queue[int] = asyncio.Queue()
        for n in range(self.figures.messages):
            todo.put_nowait(n)
        started = time.monotonic()
        faults = asyncio.create_task(self.faults())
        await asyncio.gather(*(self.worker(todo) for _ in range(self.sessions)))
        self.figures.seconds = time.monotonic() - started
        await faults
        self.count_queue()
        return self.figures

    def count_queue(self) -> None:
        pattern = re.compile(rb"soak-" + self.run_id.encode() + rb"-(\d+)-end")
        found: Counter[int] = Counter()
        for path in self.hop.queue_files():
            # One message per file; its token appears in the Message-ID and the body.
            tokens = {int(m) for m in pattern.findall(path.read_bytes())}
            found.update(tokens)
        f = self.figures
        f.lost = sum(1 for n in self.acknowledged if found[n] == 0)
        f.duplicated = sum(1 for count in found.values() if count > 1)
        f.held_unacknowledged = sum(1 for n in found if n not in self.acknowledged)


def _code_class(code: int) -> str:
    return "4xx" if 400 <= code < 500 else "5xx" if code >= 500 else "dropped"


def soak(pair: NetPair, workdir: Path, messages: int, sessions: int) -> Figures:
    with soak_setup(pair, workdir) as (served, hop):
        return asyncio.run(Soak(pair, served, hop, messages, sessions).run())
