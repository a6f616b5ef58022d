"""The mail log in the appliance's format (SPEC.md section 5).

Operators of the appliance have years of tooling (grep recipes, SIEM parsers, message tracking)
built on these lines, so the wording is kept: ``New SMTP ICID ...``, ``ICID n ACCEPT SG ...``,
``Start MID ...``, ``MID n ICID n RID n To: <...>``, ``MID n ready N bytes from <...>``,
``ICID n close``. Lines the appliance has no equivalent for (a recipient refused by a limit, a
hand-off result) follow the same ``MID n ICID n ...`` shape so the same tools can follow a
message.

ICIDs and MIDs come from one counter, so every id in a log is unique and the spec's example
(``ICID 5``, ``MID 6``, ``ICID 7``) is exactly what a fresh listener writes. ``ICID 0`` is
reserved for refusals the kernel made (the SMTP process never saw those connections). Several
processes writing one log (SO_REUSEPORT workers) keep ids apart with ``first_id``/``id_step``.

Without a file, lines go bare to standard error (a supervisor adds its own timestamps); with a
file each line is prefixed ``2026-11-23T10:00:00Z Info: `` like the appliance's log files.

A message produces about eight lines; one write(2) each was a tenth of the listener's time per
message. Lines logged from the event loop are therefore written together at the end of the
current loop iteration (``call_soon``): still in order, still out before the loop waits for
the network again. Lines logged outside a running loop are written at once.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from netpolicy.model.hat import Decision


class MailLog:
    """One mail log. Thread-safe writes; ids are handed out by ``next_id``."""

    def __init__(
        self,
        path: str | None = None,
        *,
        stream: TextIO | None = None,
        first_id: int = 1,
        id_step: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path is not None and stream is not None:
            raise ValueError("a mail log goes to a file or to a stream, not both")
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._next = first_id
        self._step = id_step
        self._stamp_second = -1
        self._stamp = ""
        self._pending: list[str] = []
        self._own_file = path is not None
        self._out: TextIO = open(path, "a", encoding="utf-8") if path else (stream or sys.stderr)

    def next_id(self) -> int:
        """A fresh ICID or MID (never 0: that is the kernel's)."""
        with self._lock:
            value = self._next
            self._next += self._step
        return value

    def reopen(self) -> None:
        """Reopen the file after log rotation (serve calls this on SIGHUP)."""
        if not self._own_file:
            return
        assert self.path is not None
        self.flush()
        with self._lock:
            self._out.close()
            self._out = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self.flush()
        if self._own_file:
            with self._lock:
                self._out.close()

    def line(self, text: str, level: str = "Info") -> None:
        """Log one line; with a file, prefixed with the UTC time and the level."""
        with self._lock:
            if self._own_file:
                second = int(self._clock())
                if second != self._stamp_second:
                    self._stamp_second = second
                    self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
                text = f"{self._stamp} {level}: {text}"
            self._pending.append(text)
            if len(self._pending) > 1:
                return  # a flush is already due
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop in this thread: write now
            self.flush()

    def flush(self) -> None:
        """Write every pending line in one go."""
        with self._lock:
            if not self._pending:
                return
            self._out.write("\n".join(self._pending) + "\n")
            self._pending.clear()
            self._out.flush()

    # The appliance's lines, in the order a conversation produces them.

    def new_connection(self, icid: int, interface: str, interface_address: str, address: str, hostname: str | None) -> None:
        host, verified = (hostname, "yes") if hostname else ("unknown", "no")
        self.line(
            f"New SMTP ICID {icid} interface {interface} ({interface_address}) address {address} "
            f"reverse dns host {host} verified {verified}"
        )

    def decision(self, icid: int, decision: Decision, delayed: bool = False) -> None:
        """``ICID 5 ACCEPT SG ALL match ALL``; a delayed REJECT says so. With a reputation block
        the score follows with one decimal, as the appliance writes it (`` SBRS -6.0``,
        `` SBRS none`` when every source failed), then the country when the policy's GeoIP
        database places the address (`` country CN``)."""
        behavior = decision.behavior.upper()
        prefix = "Delayed " if delayed else ""
        text = f"ICID {icid} {prefix}{behavior} SG {decision.sender_group} match {decision.match}"
        if decision.scored:
            text += " SBRS none" if decision.score is None else f" SBRS {decision.score:.1f}"
        if decision.country is not None:
            text += f" country {decision.country}"
        self.line(text)

    def kernel_refusal(self, sender_group: str, match: str) -> None:
        """A refusal the kernel made; written only when verbose connection logging is on."""
        self.line(f"ICID 0 TCPREFUSE SG {sender_group} match {match}")

    def refused_connection(self, icid: int, reason: str) -> None:
        """A connection answered 421 instead of a banner (max_concurrency)."""
        self.line(f"ICID {icid} Connection refused: {reason}")

    def pregreet(self, icid: int, after: float, first_bytes: bytes) -> None:
        """A client that talked before the greeting (postscreen's PREGREET), refused with 554;
        its first bytes are shown escaped so a client cannot forge log lines."""
        self.line(f"ICID {icid} Connection refused: PREGREET after {after:.3f} s: {ascii(first_bytes)[2:-1]}")

    def session_limit(self, icid: int, reason: str) -> None:
        """A session ended by a limit (max_msgs_per_session)."""
        self.line(f"ICID {icid} Session closed: {reason}")

    def tls(self, icid: int, protocol: str | None, cipher: str | None) -> None:
        self.line(f"ICID {icid} TLS success protocol {protocol} cipher {cipher}")

    def tls_failed(self, icid: int, reason: str) -> None:
        self.line(f"ICID {icid} TLS failed: {reason}", level="Warning")

    def start_message(self, mid: int, icid: int) -> None:
        self.line(f"Start MID {mid} ICID {icid}")

    def mail_from(self, mid: int, icid: int, sender: str) -> None:
        self.line(f"MID {mid} ICID {icid} From: <{sender}>")

    def recipient(self, mid: int, icid: int, rid: int, recipient: str) -> None:
        self.line(f"MID {mid} ICID {icid} RID {rid} To: <{recipient}>")

    def recipient_refused(self, mid: int, icid: int, recipient: str, reason: str) -> None:
        self.line(f"MID {mid} ICID {icid} To: <{recipient}> Rejected by {reason}")

    def ready(self, mid: int, size: int, sender: str) -> None:
        self.line(f"MID {mid} ready {size} bytes from <{sender}>")

    def receiving_failed(self, mid: int, icid: int, reason: str) -> None:
        self.line(f"MID {mid} ICID {icid} Receiving Failed: {reason}")

    def delivered(self, mid: int, where: str) -> None:
        self.line(f"MID {mid} delivered to {where}")

    def delivery_failed(self, mid: int, reply: str) -> None:
        self.line(f"MID {mid} not accepted: {reply}", level="Warning")

    # Message checks (SPEC.md section 8); texts from rspamd arrive already made printable.

    def spam_verdict(self, mid: int, score: float, action: str) -> None:
        """``MID 6 using engine: rspamd spam positive score 15.20 action reject``."""
        found = "negative" if action == "no action" else "positive"
        self.line(f"MID {mid} using engine: rspamd spam {found} score {score:.2f} action {action}")

    def antivirus(self, mid: int, viruses: list[str]) -> None:
        """``MID 6 antivirus positive 'Eicar-Signature'``, or ``antivirus negative``."""
        found = " ".join(f"'{name}'" for name in viruses)
        self.line(f"MID {mid} antivirus positive {found}" if viruses else f"MID {mid} antivirus negative")

    def spf(self, mid: int, sender: str, result: str) -> None:
        """``MID 6 SPF: mailfrom identity a@x.test Pass``."""
        self.line(f"MID {mid} SPF: mailfrom identity {sender} {result}")

    def dkim(self, mid: int, result: str, domain: str | None, selector: str | None) -> None:
        """``MID 6 DKIM: pass signature verified (d=x.test s=sel1)``, one line per signature."""
        what = {"pass": "pass signature verified", "fail": "fail signature did not verify",
                "none": "none no signature"}.get(result, result)
        where = f" (d={domain or '?'} s={selector or '?'})" if result != "none" else ""
        self.line(f"MID {mid} DKIM: {what}{where}")

    def dmarc(self, mid: int, result: str, policy: str | None, domain: str | None) -> None:
        """``MID 6 DMARC: Verification passed``; a failure names the domain and its policy."""
        if result == "pass":
            self.line(f"MID {mid} DMARC: Verification passed")
        elif result == "fail":
            self.line(f"MID {mid} DMARC: Verification failed (domain {domain or '?'} policy {policy or '?'})")
        else:
            self.line(f"MID {mid} DMARC: {result}")

    def forged_removed(self, mid: int, removed: Counter[str]) -> None:
        """``MID 6 removed 2 forged header fields (X-Spam, Authentication-Results)``: fields a
        sender wrote in our name, taken out before the checks' own were added (``removed``
        counts them by name; field names are printable ASCII)."""
        total = removed.total()
        plural = "" if total == 1 else "s"
        self.line(f"MID {mid} removed {total} forged header field{plural} ({', '.join(removed)})")

    def scan_refused(self, mid: int, reply: str) -> None:
        self.line(f"MID {mid} rejected by message checks: {reply}")

    def scan_failed(self, mid: int, reason: str, outcome: str) -> None:
        self.line(f"MID {mid} message checks failed: {reason}; {outcome}", level="Warning")

    def close_connection(self, icid: int) -> None:
        self.line(f"ICID {icid} close")
