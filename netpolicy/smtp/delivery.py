"""Hand-off of accepted mail, without loss: the client hears 250 only once the mail is safe.

Two sinks, chosen by the listener's ``delivery``:

- ``MaildirSink``: the message is written to ``tmp/``, fsynced, renamed into ``new/`` and the
  directory fsynced, all in a worker thread so concurrent sessions overlap their disk waits;
  only then does the session answer 250. The directory fsync is a group commit: one fsync
  covers every rename made before it started, so parallel deliveries share it. A failed write answers 451 and removes the partial
  file, so the client keeps (and retries) the message.
- ``NextHopSink``: a before-queue relay. The next-hop connection is opened when the client's
  MAIL arrives (telling the hop who the client is, SPEC.md section 9), every RCPT is relayed
  and the next hop's answer is passed back to the client (so a recipient the next hop refuses
  is refused to the client, never silently dropped), and the DATA answer the client gets is
  the next hop's. Unreachable, timing out, dropping the
  connection or answering 4xx becomes ``451 4.4.1``: the client keeps the message.
  aiosmtpd's bundled Proxy handler is deliberately not used: it relays with blocking smtplib
  inside the event loop and answers 250 whatever the next hop said.

A sink hands out one ``Transaction`` per client transaction (MAIL to end of DATA or RSET).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import itertools
import logging
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from netpolicy.model.policy import Delivery, split_host_port
from netpolicy.smtp.spool import Spool

log = logging.getLogger("netpolicy.smtp")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply; ``text`` carries the enhanced status code when there is one."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def lines(self) -> list[str]:
        """The reply as wire lines (multi-line replies use ``code-``)."""
        parts = self.text.split("\n") or [""]
        return [f"{self.code}{'-' if i < len(parts) - 1 else ' '}{p}".rstrip() for i, p in enumerate(parts)]

    def __str__(self) -> str:
        return " / ".join(self.lines())


class HandOffError(Exception):
    """The hand-off cannot go on; ``reply`` is what the client must hear."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def temporary(text: str) -> Reply:
    return Reply(451, f"4.4.1 {text}")


def storage_failed(exc: OSError) -> Reply:
    """A local write failed: 452 4.3.1 when the disk or quota is full (RFC 5321's "insufficient
    system storage", RFC 3463's "mail system full": the client retries later, perhaps
    elsewhere), 451 4.3.0 for any other error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Reply(452, f"4.3.1 Insufficient system storage ({exc.strerror or exc})")
    return Reply(451, f"4.3.0 Error: cannot store message ({exc.strerror or exc})")


@dataclass(frozen=True)
class MailOptions:
    """The client's MAIL parameters besides the sender, validated by the session."""

    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME" when the client said BODY=
    smtputf8: bool = False
    ret: str | None = None  # DSN: "FULL" or "HDRS"
    envid: str | None = None  # DSN: xtext, as the client wrote it


@dataclass(frozen=True)
class RcptOptions:
    """The client's DSN parameters of one RCPT (RFC 3461), validated by the session."""

    notify: str | None = None  # "NEVER", or some of SUCCESS,FAILURE,DELAY
    orcpt: str | None = None  # addr-type;xtext, as the client wrote it


@dataclass(frozen=True)
class ClientFacts:
    """The client a transaction came from, for the next hop's XCLIENT or XFORWARD."""

    address: str
    port: int | None
    name: str | None  # the verified (forward-confirmed) host name
    helo: str
    esmtp: bool
    ident: str  # the message's MID in our mail log
    name_tempfail: bool = False  # the reverse lookup failed for now (DNS error or too slow), no name


class Transaction(Protocol):
    """One client transaction at the sink."""

    async def recipient(self, address: str, options: RcptOptions | None = None) -> Reply:
        """Offer one recipient; 2xx means the sink takes mail for it."""
        ...

    async def deliver(self, message: Spool) -> Reply:
        """Hand over the message (CRLF lines, unstuffed, read in blocks); 2xx only once it is safe.

        The spool stays the caller's: it is discarded after this returns.
        """
        ...

    async def close(self) -> None:
        """End the transaction (after delivery or when the client gave up)."""
        ...


class Sink(Protocol):
    description: str  # for the mail log: "delivered to <description>"
    passes_dsn: bool  # DSN parameters reach something that acts on them: offer DSN to clients

    async def open(self, sender: str, options: MailOptions | None = None, client: ClientFacts | None = None) -> Transaction:
        """Start a transaction for ``sender``; raises ``HandOffError`` if that is refused.

        ``options`` are the client's MAIL parameters, ``client`` who it is (None: unknown).
        """
        ...

    async def close(self) -> None:
        """Release what the sink owns (threads); called once no session uses it any more."""
        ...


# --- Maildir -------------------------------------------------------------------------------


class _GroupSync:
    """fsync of one directory shared by concurrent callers (group commit).

    A caller counts its rename, then waits until an fsync that *started* after that count has
    finished; whoever finds no fsync running starts one for everybody counted so far.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._renamed = 0
        self._synced = 0
        self._running = False

    def sync_after_rename(self) -> None:
        with self._cond:
            self._renamed += 1
            ticket = self._renamed
            while self._synced < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._renamed
                done = False
                self._cond.release()
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    done = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if done:
                        self._synced = max(self._synced, target)
                    self._cond.notify_all()


_OWN_NAME = re.compile(r"\d+\.M\d+P(\d+)Q\d+\.(.+)")  # MaildirSink.write's names: pid and host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MaildirSink:
    """Writes each message once into a Maildir (the embedded sink of SPEC.md section 2).

    It only stores: MAIL and RCPT parameters are not kept (there is no one to pass them to,
    so DSN is not offered to clients of a Maildir listener), UTF-8 addresses are written as
    they came into the envelope headers.
    """

    passes_dsn = False

    def __init__(self, path: str, threads: int = 32) -> None:
        self.path = os.path.abspath(path)
        self.description = f"Maildir {path}"
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        self._tmp = os.path.join(self.path, "tmp")
        self._new = os.path.join(self.path, "new")
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._seq = itertools.count()
        self._new_sync = _GroupSync(self._new)
        removed = self._remove_leftovers()
        if removed:
            log.warning("%s: removed %d file(s) a killed writer left in tmp/", self.description, removed)
        # Writers wait on the disk, not the CPU: enough threads that concurrent sessions'
        # fsyncs land in the same journal commit (the default pool has only cores + 4).
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maildir")

    async def open(self, sender: str, options: MailOptions | None = None, client: ClientFacts | None = None) -> Transaction:
        return _MaildirTransaction(self, sender)

    async def close(self) -> None:
        # Writes already submitted finish (each was promised a reply); the threads then exit.
        await asyncio.to_thread(self.executor.shutdown, wait=True)

    def _remove_leftovers(self) -> int:
        """Remove from tmp/ what a killed writer left: files named by this sink's scheme on
        this host whose process is gone, and any file older than 36 hours (the Maildir
        convention's limit for tmp/). A live process's file is never touched: several serve
        workers, or an old and a new sink across a reload, share one Maildir. A file is in
        tmp/ only until its rename, and nothing in it was acknowledged, so nothing is lost."""
        removed = 0
        cutoff = time.time() - 36 * 3600
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                match = _OWN_NAME.fullmatch(entry.name)
                try:
                    stale = entry.stat(follow_symlinks=False).st_mtime < cutoff
                    if not stale and match is not None and match[2] == self._host:
                        stale = not _alive(int(match[1]))
                    if stale:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def write(self, envelope: bytes, message: Spool) -> str:
        """Store one message durably; returns its file name. Runs in a worker thread.

        Maildir files use LF line ends. Every CR in a message is part of a CRLF (lines.py
        refuses any other), so dropping each CR converts it block by block, whatever the
        block boundaries.
        """
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._seq)}.{self._host}"
        tmp = os.path.join(self._tmp, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                for block in itertools.chain((envelope,), (b.replace(b"\r", b"") for b in message.blocks())):
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(self._new, name))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._new_sync.sync_after_rename()  # the rename itself must survive a crash
        return name


class _MaildirTransaction:
    def __init__(self, sink: MaildirSink, sender: str) -> None:
        self.sink = sink
        self.sender = sender
        self.recipients: list[str] = []

    async def recipient(self, address: str, options: RcptOptions | None = None) -> Reply:
        self.recipients.append(address)
        return Reply(250, "2.1.5 Ok")

    async def deliver(self, message: Spool) -> Reply:
        # The envelope is kept in headers so nothing is lost.
        envelope = f"Return-Path: <{self.sender}>\n" + "".join(f"X-Original-To: <{r}>\n" for r in self.recipients)
        data = envelope.encode("utf-8", "surrogateescape")
        try:
            name = await asyncio.get_running_loop().run_in_executor(self.sink.executor, self.sink.write, data, message)
        except OSError as exc:
            return storage_failed(exc)
        return Reply(250, f"2.0.0 Ok: stored as {name}")

    async def close(self) -> None:
        return None


# --- Next hop ------------------------------------------------------------------------------

_LINK_ERRORS = (OSError, asyncio.TimeoutError, aiosmtplib.SMTPException)
_COMMAND_LINE = 510  # RFC 5321 4.5.3.1.4: 512 octets with CRLF
# What Postfix 3.7 takes as XCLIENT's NAME (anything else is 501 to XCLIENT, which would defer
# every message from that client): labels of up to 63 letters, digits, "-" and "_", not
# starting or ending with "-", and not an address ("192.0.2.7" is refused, "host.123" taken).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,255}}\Z)(?!\d+(?:\.\d+){{3}}\Z)(?:{_LABEL}\.)*{_LABEL}\Z")
_XTEXT_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("=")}


def xtext(value: str) -> str:
    """RFC 3461 section 4's xtext, which XCLIENT and XFORWARD values are written in."""
    return "".join(chr(b) if b in _XTEXT_PLAIN else f"+{b:02X}" for b in value.encode("utf-8", "surrogateescape"))


def _utf8_refused(address: str) -> Reply:
    return Reply(553, "5.6.7 The next hop does not offer SMTPUTF8, which this UTF-8 address needs")


class NextHopSink:
    """Relays each transaction to ``host:port`` while the client waits (before-queue).

    Per transaction, on a connection of its own (SPEC.md section 9): EHLO; STARTTLS and EHLO
    again with ``tls: may`` when offered, or ``tls: encrypt`` (then required and verified, a
    failure being 451 to the client); with ``forward_client: auto`` XCLIENT and EHLO again
    when the hop offers XCLIENT, else XFORWARD when it offers that, so the hop's log,
    restrictions and milters see the real client rather than this process; then MAIL with
    the client's parameters the hop offers the extensions for.
    """

    passes_dsn = True

    def __init__(self, next_hop: str, timeout: float, helo_name: str, forward_client: str = "auto",
                 tls: str = "none", tls_ca: str | None = None) -> None:
        self.host, self.port = split_host_port(next_hop)
        self.timeout = timeout
        self.helo_name = helo_name
        self.forward_client = forward_client
        self.tls = tls
        self.description = f"next hop {next_hop}"
        self._tls_context: ssl.SSLContext | None = None
        if tls == "encrypt":
            # The hop is named by address as often as by name: Python matches an IP literal
            # against the certificate's IP SANs, a name against its DNS SANs.
            self._tls_context = ssl.create_default_context(cafile=tls_ca)
        elif tls == "may":
            self._tls_context = ssl.create_default_context()
            self._tls_context.check_hostname = False
            self._tls_context.verify_mode = ssl.CERT_NONE

    async def close(self) -> None:
        """Nothing to release: each transaction owns (and closes) its own connection."""

    async def open(self, sender: str, options: MailOptions | None = None, client: ClientFacts | None = None) -> Transaction:
        options = options or MailOptions()
        smtp = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout,
            local_hostname=self.helo_name, start_tls=False,
        )
        try:
            try:
                await smtp.connect()
                await _greet(smtp)
                if self._tls_context is not None:
                    await self._starttls(smtp)
                if client is not None and self.forward_client == "auto":
                    await self._forward(smtp, client)
                utf8 = options.smtputf8 and smtp.supports_extension("smtputf8")
                if not sender.isascii() and not utf8:
                    raise HandOffError(_utf8_refused(sender))
                arguments = [b"FROM:<" + sender.encode("utf-8", "surrogateescape") + b">"]
                arguments += (p.encode("utf-8") for p in _mail_parameters(options, smtp, utf8))
                reply = _reply(await smtp.execute_command(b"MAIL", *arguments))
            except aiosmtplib.SMTPResponseException as exc:
                raise HandOffError(temporary(f"Next hop {self.host}:{self.port} refused the connection: {exc.code} {exc.message}")) from None
            except ssl.SSLError as exc:
                raise HandOffError(temporary(f"Next hop {self.host}:{self.port}: TLS failed ({_describe(exc)})")) from None
            except _LINK_ERRORS as exc:
                raise HandOffError(temporary(f"Next hop {self.host}:{self.port} unreachable ({_describe(exc)})")) from None
            if not reply.ok:
                raise HandOffError(_passed_on(reply, self))
        except BaseException:
            # Whatever ends it (aiosmtplib's ValueError for a control character, a cancelled
            # session), the connection goes too: 20 such sessions left 20 connections open.
            smtp.close()
            raise
        return _NextHopTransaction(self, smtp, utf8=utf8, dsn=smtp.supports_extension("dsn"))

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.supports_extension("starttls"):
            if self.tls == "encrypt":
                raise HandOffError(temporary(f"Next hop {self.host}:{self.port} does not offer STARTTLS (tls: encrypt)"))
            return
        await smtp.starttls(tls_context=self._tls_context, server_hostname=self.host)
        await _greet(smtp)  # RFC 3207 4.2: what the hop offered before TLS no longer holds

    async def _forward(self, smtp: aiosmtplib.SMTP, client: ClientFacts) -> None:
        """XCLIENT (then EHLO again: the hop is back at its greeting) or XFORWARD, with the
        attributes the hop lists after the keyword, in one command."""
        extensions = smtp.esmtp_extensions
        if "xclient" in extensions:
            verb, attributes = "XCLIENT", client_attributes(client, extensions["xclient"], xforward=False)
        elif "xforward" in extensions:
            verb, attributes = "XFORWARD", client_attributes(client, extensions["xforward"], xforward=True)
        else:
            return
        reply = _reply(await smtp.execute_command(verb.encode(), *(a.encode() for a in attributes)))
        if not reply.ok:
            # 501 (a value it could not take) is ours to fix, not the client's fault; any
            # other 5xx is the hop's connection-level access decision on the real client.
            if reply.code == 501 or reply.code < 500:
                raise HandOffError(temporary(f"Next hop {self.host}:{self.port} refused {verb}: {reply.code} {reply.text}"))
            raise HandOffError(reply)
        if verb == "XCLIENT":
            # Back at the greeting: Postfix takes this EHLO's name as the client's HELO, so it
            # is the client's own when that can be sent (one printable word).
            helo = client.helo
            sendable = 0 < len(helo) <= 255 and helo.isascii() and helo.isprintable() and " " not in helo
            await _greet(smtp, helo if sendable else None)


async def _greet(smtp: aiosmtplib.SMTP, name: str | None = None) -> None:
    """EHLO (HELO if the hop refuses it) with ``name``, by default our own host name."""
    try:
        await smtp.ehlo(hostname=name)
    except aiosmtplib.SMTPHeloError:
        await smtp.helo(hostname=name)


def _name(client: ClientFacts, xforward: bool) -> str:
    if client.name and _HOSTNAME.match(client.name):
        return client.name
    return "[TEMPUNAVAIL]" if client.name_tempfail and not xforward else "[UNAVAILABLE]"


def client_attributes(client: ClientFacts, offered: str, xforward: bool) -> list[str]:
    """``NAME=value`` pairs (xtext) for XCLIENT, or XFORWARD with its SOURCE and IDENT, of the
    attribute names the hop listed after the EHLO keyword (``offered``).

    They must fit one command line: after an XCLIENT, Postfix judges the client it was told
    about, which is not authorised for a second XCLIENT. A HELO that would not fit (or that
    Postfix refuses with 501, longer than a host name may be) is sent as [UNAVAILABLE].
    A name the reverse lookup could not settle for now is XCLIENT's [TEMPUNAVAIL], so the hop's
    reject_unknown_client_hostname defers (450) instead of refusing a client that may have a
    name; XFORWARD's NAME only feeds the hop's log, and Postfix takes only [UNAVAILABLE] there.
    """
    names = frozenset(offered.upper().split())
    values = {
        "ADDR": f"IPV6:{client.address}" if ":" in client.address else client.address,
        "PORT": "[UNAVAILABLE]" if client.port is None else str(client.port),
        "NAME": _name(client, xforward),
        "HELO": client.helo if 0 < len(client.helo) <= 255 else "[UNAVAILABLE]",
        "PROTO": "ESMTP" if client.esmtp else "SMTP",
    }
    if xforward:
        values.update(SOURCE="REMOTE", IDENT=client.ident)
    attributes = {name: f"{name}={xtext(value)}" for name, value in values.items() if name in names}
    if len("XFORWARD") + sum(1 + len(a) for a in attributes.values()) > _COMMAND_LINE and "HELO" in attributes:
        attributes["HELO"] = "HELO=[UNAVAILABLE]"
    return list(attributes.values())


def _mail_parameters(options: MailOptions, smtp: aiosmtplib.SMTP, utf8: bool) -> list[str]:
    """The client's MAIL parameters the hop offers the extension for (SPEC.md section 9)."""
    parameters: list[str] = []
    if options.size is not None and smtp.supports_extension("size"):
        parameters.append(f"SIZE={options.size}")
    if options.body is not None and smtp.supports_extension("8bitmime"):
        parameters.append(f"BODY={options.body}")
    if utf8:
        parameters.append("SMTPUTF8")
    if smtp.supports_extension("dsn"):
        if options.ret is not None:
            parameters.append(f"RET={options.ret}")
        if options.envid is not None:
            parameters.append(f"ENVID={options.envid}")
    return parameters


class _NextHopTransaction:
    def __init__(self, sink: NextHopSink, client: aiosmtplib.SMTP, utf8: bool, dsn: bool) -> None:
        self.sink = sink
        self.client = client
        self.utf8 = utf8  # the hop took SMTPUTF8 for this transaction
        self.dsn = dsn
        self.broken: Reply | None = None

    async def recipient(self, address: str, options: RcptOptions | None = None) -> Reply:
        if self.broken is not None:
            return self.broken
        if not self.utf8 and not address.isascii():
            return _utf8_refused(address)
        arguments = [b"TO:<" + address.encode("utf-8", "surrogateescape") + b">"]
        if options is not None and self.dsn:
            if options.notify is not None:
                arguments.append(f"NOTIFY={options.notify}".encode())
            if options.orcpt is not None and (self.utf8 or options.orcpt.isascii()):
                arguments.append(f"ORCPT={options.orcpt}".encode())
        try:
            reply = _reply(await self.client.execute_command(b"RCPT", *arguments))
        except _LINK_ERRORS as exc:
            return self._break(exc)
        except BaseException as exc:
            self._break(exc)  # where the conversation stands is unknown: no QUIT, just close
            raise
        # 2xx and 5xx go back verbatim; a 4xx too, so the client retries just that recipient.
        return reply

    async def deliver(self, message: Spool) -> Reply:
        if self.broken is not None:
            return self.broken
        try:
            response = await _send_data(self.client, message, self.sink.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            return _passed_on(Reply(exc.code, exc.message), self.sink)
        except _LINK_ERRORS as exc:
            return self._break(exc)
        return _reply(response)

    def _break(self, exc: BaseException) -> Reply:
        self.client.close()
        self.broken = temporary(f"Next hop {self.sink.host}:{self.sink.port} failed ({_describe(exc)})")
        return self.broken

    async def close(self) -> None:
        """QUIT if the conversation is sound, without waiting for the hop's 221, and close.

        The hop has taken or refused the message by now; waiting for the 221 held the client's
        own next command (its QUIT, after the 250) for one more round trip to the hop. The
        QUIT goes out before the close (the transport flushes its buffer first), so Postfix
        still logs an orderly end (``quit=1``), not a lost connection.
        """
        protocol = self.client.protocol
        if self.broken is None and self.client.is_connected and protocol is not None:
            with contextlib.suppress(aiosmtplib.SMTPServerDisconnected):
                protocol.write(b"QUIT\r\n")
        self.client.close()


async def _send_data(client: aiosmtplib.SMTP, message: Spool, step_timeout: float) -> aiosmtplib.SMTPResponse:
    """DATA with the message streamed block by block, dot-stuffed on the way.

    aiosmtplib (5.1) takes DATA only as one ``bytes``, which it copies twice (line-end
    normalisation, dot-stuffing) and writes to the transport in one piece: three whole copies
    per message. This speaks DATA over its protocol object instead, under its command lock, and
    waits for the socket to drain after each block, so at most about one block is buffered.
    ``step_timeout`` bounds each reply and each drain, as aiosmtplib's own timeout does.
    Raises what ``SMTP.data`` raises (``SMTPDataError`` for a refusal).
    """
    protocol = client.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    async with protocol._command_lock:
        protocol._response_pending = True
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response(timeout=step_timeout)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        at_line_start = True
        held = b""
        for block in message.blocks():
            if held:
                protocol.write(held)
                await asyncio.wait_for(protocol._drain_helper(), step_timeout)
            held = block.replace(b"\n.", b"\n..")  # RFC 5321 4.5.2
            if at_line_start and held[:1] == b".":
                held = b"." + held
            at_line_start = block[-1:] == b"\n"
        protocol._response_pending = True
        # The last block goes with the terminator: one send, not two, for a message of one block
        # (a loopback send cost 112 us of the relay's CPU under load, 16 of them per message).
        protocol.write(held + (b".\r\n" if at_line_start else b"\r\n.\r\n"))
        response = await protocol.read_response(timeout=step_timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _reply(response: aiosmtplib.SMTPResponse) -> Reply:
    return Reply(response.code, response.message)


def _passed_on(reply: Reply, sink: NextHopSink) -> Reply:
    """A whole-transaction refusal from the next hop: 5xx as it came, 4xx as 451 4.4.1."""
    if reply.code >= 500:
        return reply
    return temporary(f"Next hop {sink.host}:{sink.port} deferred: {reply.code} {reply.text}")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def make_sink(delivery: Delivery, hostname: str) -> Sink:
    if delivery.maildir is not None:
        return MaildirSink(delivery.maildir)
    assert delivery.next_hop is not None  # the model guarantees exactly one
    return NextHopSink(delivery.next_hop, delivery.timeout, hostname, delivery.forward_client, delivery.tls, delivery.tls_ca)
