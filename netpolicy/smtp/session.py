"""One SMTP connection under a mail flow policy: a subclass of aiosmtpd's ``SMTP``.

aiosmtpd (pinned to 1.4.6) has no hook at connect time: ``SMTP._handle_client`` pushes the 220
banner before anything else runs. REJECT-at-banner, userland TCPREFUSE and max_concurrency all
have to act *before* that banner, so ``_handle_client`` is replaced: it decides first (HAT,
reverse DNS, DNS lists, bounded by a timeout), then either refuses (RST, a reject banner, a
421) or greets and runs its own command loop. The command loop is ours too because the
inherited one accepts bare LF, answers 530 without the enhanced code SPEC.md requires, and
reads DATA fully into memory before any size check.

What is still aiosmtpd's: the transport and StreamReader plumbing, connection_made/lost (and
the STARTTLS transport switch inside them; ``eof_received`` is ours), the idle timer,
parameter parsing (paths are read strictly by ``paths.py``), STARTTLS itself, NOOP, VRFY and HELP.

``SMTP.__init__`` is not called: per connection it inspects every attribute of the protocol
and the handler (about 130 µs, a tenth of the budget per message) to build tables this class
does not use. ``_init_aiosmtpd_state`` sets every attribute aiosmtpd 1.4.6's ``__init__``
sets; a unit test compares the two so an aiosmtpd upgrade cannot silently break this.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import logging
import re
import socket
import struct
import time
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException, syntax

from netpolicy.model.effective import expand_text
from netpolicy.model.entries import AnswerPattern
from netpolicy.model.hat import Decision, Fact, Resolver
from netpolicy.model.policy import Reputation
from netpolicy.smtp.delivery import (
    ClientFacts,
    HandOffError,
    MailOptions,
    RcptOptions,
    Reply,
    Transaction,
    storage_failed,
)
from netpolicy.smtp.lines import (
    BareNewline,
    LineTooLong,
    MessageData,
    read_command,
    read_message,
)
from netpolicy.smtp.paths import parse_path
from netpolicy.smtp.scanner import FORGEABLE, Checks, ScanEnvelope, claims_to_be_ours
from netpolicy.smtp.services import Generation, Services
from netpolicy.smtp.spool import DATA_FLOOR, Spool

log = logging.getLogger("netpolicy.smtp")

# RFC 3207 section 4: what a client may say before STARTTLS when TLS is required.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
COMMANDS = ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "STARTTLS")
_LINGER_ZERO = struct.pack("ii", 1, 0)
_UTF8_ARGUMENTS = frozenset({"MAIL", "RCPT"})  # SMTPUTF8 addresses; every other argument is ASCII
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")  # RFC 5321 4.1.2 esmtp-keyword
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+\Z")  # RFC 3461 4
_UNITEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e\u00a0-\U0010ffff]|\+[0-9A-F]{2})+\Z")  # RFC 6533 3
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_MUST_DECLARE_UTF8 = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
Parameters = dict[str, str | None]


def client_address(peer: Any) -> str:
    """The peer's address as the HAT knows it (IPv4-mapped IPv6 and scope ids removed)."""
    host = str(peer[0])
    if ":" not in host:
        return host
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class _KnownName:
    """Resolver view for one connection: the PTR name is already known, DNS lists are asked."""

    def __init__(self, resolver: Resolver, hostname: Fact[str | None]) -> None:
        self._resolver = resolver
        self._hostname = hostname

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        return self._hostname

    async def dnslisted(self, address: str, zone: str, pattern: AnswerPattern) -> Fact[bool]:
        return await self._resolver.dnslisted(address, zone, pattern)

    async def score(self, address: str, reputation: Reputation) -> Fact[float | None]:
        return await self._resolver.score(address, reputation)


@functools.lru_cache(maxsize=1)
def _date_of(second: int) -> str:
    return email.utils.formatdate(second, localtime=True)


def _date_now() -> str:
    """RFC 5322 date of this second (formatted once per second, not once per message)."""
    return _date_of(int(time.time()))


def _status(code: int, subject_detail: str) -> str:
    """An enhanced status code whose class matches the reply code (RFC 3463)."""
    return f"{code // 100}.{subject_detail}"


class PolicySMTP(SMTP):
    """An SMTP session whose every answer comes from the decision made at connect."""

    def __init__(self, generation: Generation, services: Services) -> None:
        self.gen = generation
        self.services = services
        self._init_aiosmtpd_state(generation.listener.hostname, services.limits.command_timeout, services.limits.line_length)
        self.address = ""
        self.hostname_ptr: str | None = None
        self.hostname_tempfail = False  # no verified name because a lookup failed or was too slow
        self.decision: Decision | None = None
        self.icid = 0
        self._counted = False
        self._delayed_reject = False
        self._tls_required = False
        self._size_limit = services.limits.message_size_cap
        self._rcpt_limit = services.limits.recipients_cap
        self._messages = 0
        self._bogus = 0
        self._greeted = False
        self._connected_at = self._early_at = 0.0
        self.early = b""  # what the client sent before our greeting (the first bytes, for the log)
        self._reset_envelope_state()

    def _init_aiosmtpd_state(self, hostname: str, timeout: float, line_length: int) -> None:
        loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(limit=line_length, loop=loop), client_connected_cb=self._cb_client_connected, loop=loop
        )
        self.__ident__ = "netpolicy"
        self.loop = loop
        self.event_handler = None
        self.data_size_limit = None
        self.enable_SMTPUTF8 = False
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = None
        self.require_starttls = False
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = None
        self._auth_required = False
        self._auth_methods: dict[str, Any] = {}
        self._handle_hooks: dict[str, Any] = {}
        self._ehlo_hook_ver = None
        self._smtp_methods = {name: getattr(self, "smtp_" + name) for name in COMMANDS}
        self._enforce_call_limit = False

    def _reset_envelope_state(self) -> None:
        self.mid = 0
        self.txn: Transaction | None = None
        self.rcpt_attempts = 0
        self.smtputf8 = False  # the client declared SMTPUTF8 at MAIL

    # --- connection lifecycle ----------------------------------------------------------------

    async def _handle_client(self) -> None:
        assert self.session is not None
        services = self.services
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and not services.fds.admit(sock.fileno()):
            cast(asyncio.Transport, self.transport).write(f"421 4.3.2 {self.hostname} Too busy, try again later\r\n".encode())
            self._close()
            return
        self._connected_at = self.loop.time()
        services.sessions.add(self)
        services.stats.open_connections += 1
        try:
            if await self._open_conversation():
                await self._command_loop()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing it was told 250 for is affected
        except Exception:
            log.exception("ICID %s: internal error", self.icid)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(f"421 4.3.0 {self.hostname} Error: internal error\r\n".encode())  # type: ignore[attr-defined]
                self.transport.close()
        finally:
            self._close()  # the session is over whatever ended it: no socket left in CLOSE-WAIT
            services.sessions.discard(self)
            await self._end_transaction()
            if self._counted:
                await services.counters.close_connection(self.address)
            if self.icid:
                services.maillog.close_connection(self.icid)
            services.stats.open_connections -= 1

    async def _decide(self) -> Decision:
        """HAT decision with forward-confirmed reverse DNS and DNS lists, bounded in time."""
        resolver = self.services.resolver
        hat = self.gen.hat
        self.hostname_tempfail = True
        try:
            async with asyncio.timeout(self.services.limits.decision_timeout):
                name = await resolver.verified_hostname(self.address)
                self.hostname_ptr = name.value
                self.hostname_tempfail = name.value is None and name.ttl == 0
                return await hat.decide_async(self.address, _KnownName(resolver, name))
        except TimeoutError:
            log.warning("%s: DNS too slow for the HAT decision; deciding by address", self.address)
        except Exception:
            log.exception("%s: resolver failed; deciding by address", self.address)
        return hat.decide(self.address, hostname=self.hostname_ptr)

    async def _open_conversation(self) -> bool:
        """Decide, then refuse or greet. True when the client got a 220 and may talk."""
        assert self.session is not None
        services = self.services
        self.address = client_address(self.session.peer)
        decision = self.decision = await self._decide()
        policy = decision.policy
        listener = self.gen.listener
        maillog = services.maillog
        self.icid = maillog.next_id()
        maillog.new_connection(self.icid, listener.name, listener.address, self.address, self.hostname_ptr)
        behavior = decision.behavior
        self._delayed_reject = behavior == "reject" and listener.delayed_reject
        maillog.decision(self.icid, decision, delayed=self._delayed_reject)
        services.stats.connection(decision.sender_group, "delayed-reject" if self._delayed_reject else behavior)
        if behavior == "tcprefuse":
            self._reset_connection()
            services.refused(self.address, decision, self.gen.hat)
            return False
        if behavior == "reject":
            services.offence(self.address, decision, "reject")
            if not self._delayed_reject:
                await self.push(f"{policy.reject_banner_code} {self._expand(policy.reject_banner_text)}")
                self._close()
                return False
        if not await services.counters.open_connection(self.address, policy.max_concurrency):
            services.stats.refused_concurrency += 1
            maillog.refused_connection(self.icid, f"max_concurrency {policy.max_concurrency} reached")
            await self.push(f"421 4.7.0 {listener.hostname} Too many concurrent connections from {self.address}")
            self._close()
            return False
        self._counted = True
        if policy.tls != "off":
            self.tls_context = self.gen.tls_context
            self._tls_required = policy.tls == "required"
        if policy.max_message_size is not None:
            self._size_limit = policy.max_message_size
        if policy.max_rcpts_per_msg is not None:
            self._rcpt_limit = policy.max_rcpts_per_msg
        if self.early:
            await self._refuse_pregreet()
            return False
        if self._reader.at_eof():
            return False  # the client left before the greeting
        self._greeted = True  # checked and set with no await before the banner is written
        await self.push(f"{policy.smtp_banner_code} {self._expand(policy.smtp_banner_text)}")
        return True

    async def _refuse_pregreet(self) -> None:
        """Postscreen's pregreet test: a client that talks before our 220 (the HAT decision and
        its DNS lookups included) is not waiting for replies, so none of its commands is run
        (measured without this test: all 100 commands sent before the banner were executed).
        It gets 554 and the close, and the offence counts towards the policy's promote_after."""
        assert self.decision is not None
        services = self.services
        services.stats.pregreet += 1
        services.maillog.pregreet(self.icid, self._early_at - self._connected_at, self.early)
        services.offence(self.address, self.decision, "pregreet")
        await self.push(f"554 5.5.1 {self.hostname} Protocol error: commands sent before the greeting")
        self._close()

    def _expand(self, text: str) -> str:
        assert self.decision is not None
        return expand_text(
            text, hostname=self.gen.listener.hostname, remote_ip=self.address,
            group=self.decision.sender_group, policy=self.decision.policy.name,
        )

    def _reset_connection(self) -> None:
        """Userland TCPREFUSE: the handshake completed, so answer with RST and no banner."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        cast(asyncio.Transport, self.transport).abort()  # aiosmtpd types it as BaseTransport

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def end(self, reply: str) -> asyncio.Task[None] | None:
        """Shut the session down (listener stop): ``reply`` if the client can still hear it,
        then close. Returns the session's task, to be waited for."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii", "replace") + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
        return self._handler_coroutine

    def data_received(self, data: bytes) -> None:
        if not self._greeted and not self.early:
            self.early = data[:64]
            self._early_at = self.loop.time()
        super().data_received(data)

    def eof_received(self) -> bool:
        """The client sent FIN. aiosmtpd's handler cancels the session task and keeps the
        transport open, so the socket stays in CLOSE-WAIT until the 300 s idle timer (measured:
        100 of 100 connect-EHLO-close sessions; 1,282 of 2,000 closing right after QUIT, the QUIT
        and the FIN arriving together). Here the reader gets EOF instead: what the client sent before
        its FIN is still answered (that QUIT gets its 221 on the open write side), then the
        command loop ends and ``_handle_client`` closes the transport. TLS cannot half-close."""
        keep_open = bool(asyncio.StreamReaderProtocol.eof_received(self))
        return keep_open and (self.session is None or self.session.ssl is None)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; a 421 tells the client why (RFC 5321 section 4.5.3.2).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())  # type: ignore[attr-defined]
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        data = status if isinstance(status, bytes) else status.encode("ascii", "replace")
        self._writer.write(data + b"\r\n")
        await self._writer.drain()

    async def _reply(self, reply: Reply) -> None:
        await self.push("\r\n".join(reply.lines()))

    # --- command loop ------------------------------------------------------------------------

    async def _command_loop(self) -> None:
        limits = self.services.limits
        while self.transport is not None:
            try:
                line = await read_command(self._reader)
            except LineTooLong:
                await self.push("500 5.5.2 Error: line too long")
                continue
            except BareNewline:
                await self._refuse_bare_newline()
                return
            except asyncio.IncompleteReadError:
                return
            command_bytes, _, arg_bytes = line.partition(b" ")
            try:
                command = command_bytes.upper().decode("ascii")
                arg = arg_bytes.strip().decode("utf-8" if command in _UTF8_ARGUMENTS else "ascii") or None
            except UnicodeDecodeError:
                await self.push("500 5.5.2 Error: non-ASCII command (UTF-8 only in MAIL and RCPT addresses, RFC 6531)")
                continue
            method = self._smtp_methods.get(command)
            if method is None:
                self._bogus += 1
                if self._bogus >= limits.bogus_commands:
                    await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                    self._close()
                    return
                await self.push(f'500 5.5.2 Error: command "{command[:20]}" not recognized')
                continue
            if self._tls_required and self._tls_protocol is None and command not in ALLOWED_BEFORE_STARTTLS:
                await self.push("530 5.7.0 Must issue a STARTTLS command first")
                continue
            self._reset_timeout()
            try:
                await method(arg)
            except BareNewline:
                await self._refuse_bare_newline()
                return
            except TLSSetupException as exc:
                self.services.maillog.tls_failed(self.icid, str(exc.__cause__ or exc))
                self._close()
                return

    async def _refuse_bare_newline(self) -> None:
        await self.push(f"521 5.5.2 {self.hostname} Error: bare <CR> or <LF> received")
        self._close()

    def _need_helo(self) -> str | None:
        assert self.session is not None
        return None if self.session.host_name else "503 5.5.1 Error: send HELO/EHLO first"

    # --- greeting and TLS --------------------------------------------------------------------

    @syntax("HELO hostname")
    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        await self._end_transaction()
        assert self.session is not None
        self.session.host_name = arg
        self.session.extended_smtp = False
        await self.push(f"250 {self.hostname}")

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        await self._end_transaction()
        assert self.session is not None
        self.session.host_name = arg
        self.session.extended_smtp = True
        lines = [self.hostname, "PIPELINING", f"SIZE {self._size_limit}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and self._tls_protocol is None:
            lines.append("STARTTLS")
        if self.gen.sink.passes_dsn:
            lines.append("DSN")
        lines.append("SMTPUTF8")
        await self.push("\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines)))

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 Error: TLS already active")
            return
        if self.tls_context is None:
            await self.push("454 4.7.0 TLS not available")
            return
        await self._end_transaction()
        await super().smtp_STARTTLS(arg)
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            self.services.maillog.tls(self.icid, ssl_object.version(), (ssl_object.cipher() or ("?",))[0])

    # --- the transaction ---------------------------------------------------------------------

    async def _end_transaction(self) -> None:
        """Forget the envelope and let the sink go (the client did not get 250 for it)."""
        txn = self.txn
        self._reset_envelope_state()
        self.envelope = Envelope()
        if txn is not None:
            await txn.close()

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        await self._end_transaction()
        await self.push("250 2.0.0 Ok")

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self.push("221 2.0.0 Bye")
        self._close()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        problem = self._need_helo()
        if problem:
            await self.push(problem)
            return
        assert self.envelope is not None and self.decision is not None and self.session is not None
        if self.mid:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        policy = self.decision.policy
        limit = policy.max_msgs_per_session
        if limit is not None and self._messages >= limit:
            self.services.maillog.session_limit(self.icid, f"max_msgs_per_session {limit} reached")
            await self.push(f"421 4.7.0 {self.hostname} Too many messages in this session (limit {limit})")
            self._close()
            return
        parsed = self._parse_path("FROM:", arg)
        if isinstance(parsed, str):
            await self.push(parsed)
            return
        sender, params = parsed
        options = mail_options(params, dsn=self.gen.sink.passes_dsn)
        if isinstance(options, str):
            await self.push(options)
            return
        if not sender.isascii() and not options.smtputf8:
            await self.push(_MUST_DECLARE_UTF8)
            return
        if options.size is not None and options.size > self._size_limit:
            self.services.stats.messages_too_big += 1
            await self.push(f"552 5.3.4 Message size exceeds fixed maximum message size ({self._size_limit} bytes)")
            return
        maillog = self.services.maillog
        mid = maillog.next_id()
        maillog.start_message(mid, self.icid)
        maillog.mail_from(mid, self.icid, sender)
        if not self._delayed_reject:
            try:
                self.txn = await self.gen.sink.open(sender, options, self._client_facts(mid))
            except HandOffError as exc:
                maillog.delivery_failed(mid, str(exc.reply))
                if exc.reply.code < 500:
                    self.services.stats.messages_temp_failed += 1
                await self._reply(exc.reply)
                return
        self._messages += 1
        self.mid = mid
        self.smtputf8 = options.smtputf8
        self.envelope.mail_from = sender
        await self.push("250 2.1.0 Ok")

    def _client_facts(self, mid: int) -> ClientFacts:
        """Who this client is, for a next hop's XCLIENT or XFORWARD (SPEC.md section 9)."""
        assert self.session is not None
        peer = self.session.peer
        port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else None
        return ClientFacts(self.address, port, self.hostname_ptr, self.session.host_name or "",
                           bool(self.session.extended_smtp), str(mid), self.hostname_tempfail)

    def _parse_path(self, keyword: str, arg: str | None) -> tuple[str, Parameters] | str:
        """``(address, params)`` of a MAIL/RCPT argument, or the error reply.

        The path is read by RFC 5321's grammar (``paths.py``), with the replies Postfix gives
        under ``strict_rfc821_envelopes``: no brackets, an unclosed ``<``, a control
        character or anything else outside the grammar is ``501 5.1.7`` (sender) or
        ``501 5.1.3`` (recipient). Spaces, and only spaces, may follow the colon.
        """
        assert self.session is not None
        mail = keyword == "FROM:"
        syntax = f"501 5.5.4 Syntax: {'MAIL FROM' if mail else 'RCPT TO'}:<address>"
        arg = arg or ""
        rest = arg[len(keyword):].lstrip(" ")
        if arg[:len(keyword)].upper() != keyword or not rest:
            return syntax
        parsed = parse_path(rest, reverse=mail)
        if parsed is None:
            return "501 5.1.7 Bad sender address syntax" if mail else "501 5.1.3 Bad recipient address syntax"
        address, tail = parsed
        if tail.strip() and not self.session.extended_smtp:
            return syntax
        params = parameters(tail)
        if params is None:
            return syntax
        return address, params

    @syntax("RCPT TO: <address>")
    async def smtp_RCPT(self, arg: str | None) -> None:
        problem = self._need_helo()
        if problem:
            await self.push(problem)
            return
        assert self.envelope is not None and self.decision is not None
        if not self.mid:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        parsed = self._parse_path("TO:", arg)
        if isinstance(parsed, str):
            await self.push(parsed)
            return
        recipient, params = parsed
        options = rcpt_options(params, dsn=self.gen.sink.passes_dsn, utf8=self.smtputf8)
        if isinstance(options, str):
            await self.push(options)
            return
        if not recipient.isascii() and not self.smtputf8:
            await self.push(_MUST_DECLARE_UTF8)
            return
        self.rcpt_attempts += 1
        refusal = await self._check_recipient(recipient, options)
        if refusal is not None:
            reason, reply = refusal
            self.services.stats.recipients_refused[reason] += 1
            self.services.maillog.recipient_refused(self.mid, self.icid, recipient, reason)
            await self._reply(reply)
            return
        rid = len(self.envelope.rcpt_tos)
        self.envelope.rcpt_tos.append(recipient)
        self.services.maillog.recipient(self.mid, self.icid, rid, recipient)
        await self.push("250 2.1.5 Ok")

    async def _check_recipient(self, recipient: str, options: RcptOptions) -> tuple[str, Reply] | None:
        """Why this recipient is refused (a log reason and the reply), or None to accept it."""
        assert self.decision is not None and self.envelope is not None
        decision = self.decision
        policy = decision.policy
        services = self.services
        counters = services.counters
        if self._delayed_reject:
            code = policy.reject_banner_code
            return "delayed REJECT", Reply(code, f"{_status(code, '7.1')} {self._expand(policy.reject_banner_text)}")
        if len(self.envelope.rcpt_tos) >= self._rcpt_limit:
            return "max_rcpts_per_msg", Reply(452, f"4.5.3 Error: too many recipients (limit {self._rcpt_limit})")
        dhap = policy.dhap_limit
        if dhap is not None and await counters.count("dhap", self.address) > dhap:
            return self._dhap(policy.dhap_code, policy.dhap_text)
        if decision.behavior != "relay" and not self.gen.rat.accepts(recipient):
            if dhap is not None and await counters.hit("dhap", self.address) > dhap:
                services.offence(self.address, decision, "dhap")
                return self._dhap(policy.dhap_code, policy.dhap_text)
            return "RAT", Reply(550, f"5.7.1 <{recipient}>: Recipient address rejected: not accepted here")
        if not await counters.take("rcpts", self.address, policy.max_rcpts_per_hour):
            services.offence(self.address, decision, "rate-limit")
            code = policy.rate_limit_code
            return "rate limit", Reply(code, f"{_status(code, '7.0')} {self._expand(policy.rate_limit_text)}")
        assert self.txn is not None
        reply = await self.txn.recipient(recipient, options)
        if reply.ok:
            return None
        if reply.code >= 500 and dhap is not None and await counters.hit("dhap", self.address) > dhap:
            services.offence(self.address, decision, "dhap")
            return self._dhap(policy.dhap_code, policy.dhap_text)
        return f"next hop ({reply.code})", reply

    def _dhap(self, code: int, text: str) -> tuple[str, Reply]:
        return "DHAP", Reply(code, f"{_status(code, '7.1')} {self._expand(text)}")

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        problem = self._need_helo()
        if problem:
            await self.push(problem)
            return
        assert self.envelope is not None
        if not self.mid:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not self.envelope.rcpt_tos:
            if self.rcpt_attempts:
                await self.push("554 5.5.1 Error: no valid recipients")
            else:
                await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        limits = self.services.limits
        budget = self.services.budget
        if budget.free < DATA_FLOOR:
            # Before the 354, so the client does not send a message only to hear 4xx at its
            # end; the transaction stays open and DATA may be tried again.
            self.services.maillog.receiving_failed(self.mid, self.icid, "In-flight Budget Exhausted")
            await self.push("452 4.3.1 Insufficient system storage, try again later")
            return
        spool = Spool(budget, limits.spool_dir)
        try:
            spool.write(self._received_header())
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._reset_timeout(limits.data_deadline)  # hard deadline: not reset per line
            data = await read_message(self._reader, spool, self._size_limit, limits.line_length)
            assert self._timeout_handle is not None
            self._timeout_handle.cancel()  # delivery is bounded by its own timeouts
            try:
                await self._finish_message(spool, data)
            finally:
                self._reset_timeout()
                await self._end_transaction()
        finally:
            spool.discard()

    async def _finish_message(self, spool: Spool, data: MessageData) -> None:
        assert self.envelope is not None and self.envelope.mail_from is not None and self.txn is not None
        services = self.services
        maillog = services.maillog
        stats = services.stats
        problem = data.problem
        if problem == "size":
            stats.messages_too_big += 1
            maillog.receiving_failed(self.mid, self.icid, "Message Size Too Large")
            await self.push(f"552 5.3.4 Message size exceeds fixed maximum message size ({self._size_limit} bytes)")
            return
        if problem == "line":
            maillog.receiving_failed(self.mid, self.icid, "Line Too Long")
            await self.push("500 5.5.2 Error: message line too long (RFC 5321 4.5.3.1.6)")
            return
        if problem == "nul":
            maillog.receiving_failed(self.mid, self.icid, "NUL Character")
            await self.push("554 5.6.0 Message content rejected: NUL character (RFC 5322 text excludes it)")
            return
        if problem is not None:  # "busy" or "storage": the client keeps the message and retries
            await self._not_held(storage_failed(data.error) if data.error is not None
                                 else Reply(452, "4.3.1 Insufficient system storage, try again later"))
            return
        maillog.ready(self.mid, data.size, self.envelope.mail_from)
        assert self.decision is not None and self.session is not None
        if self.decision.policy.scans:  # SPEC.md section 8: asked before the client hears anything
            scan = ScanEnvelope(self.mid, self.address, self.session.host_name or "", self.hostname_ptr,
                                self.envelope.mail_from, self.envelope.rcpt_tos, self.hostname)
            verdict = await services.scanner.check(Checks.of(self.decision.policy), scan, spool, maillog)
            if verdict.reply is not None:
                await self._reply(verdict.reply)
                return
            try:
                forged = await spool.remove_header_fields(FORGEABLE, claims_to_be_ours(self.hostname))
            except OSError as exc:  # the spool's disk is full
                await self._not_held(storage_failed(exc))
                return
            if forged:
                maillog.forged_removed(self.mid, forged)
            spool.prepend(verdict.headers)
        stats.messages_accepted += 1
        reply = await self.txn.deliver(spool)
        if reply.ok:
            stats.messages_delivered += 1
            maillog.delivered(self.mid, self.gen.sink.description)
        else:
            if reply.code < 500:
                stats.messages_temp_failed += 1
            else:
                stats.messages_rejected += 1
            maillog.delivery_failed(self.mid, str(reply))
        await self._reply(reply)

    async def _not_held(self, refusal: Reply) -> None:
        """The message could not be held (no budget or no disk): the client keeps it and retries."""
        self.services.stats.messages_temp_failed += 1
        self.services.maillog.receiving_failed(self.mid, self.icid, str(refusal))
        await self._reply(refusal)

    def _received_header(self) -> bytes:
        assert self.session is not None and self.envelope is not None
        protocol = "ESMTPS" if self._tls_protocol is not None else ("ESMTP" if self.session.extended_smtp else "SMTP")
        if self.smtputf8:
            protocol = protocol.replace("ESMTP", "UTF8SMTP")  # RFC 6531 section 4.3
        rcpts = self.envelope.rcpt_tos
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        header = (
            f"Received: from {self.session.host_name} ({self.hostname_ptr or 'unknown'} [{self.address}])\r\n"
            f"\tby {self.hostname} (netpolicy) with {protocol} id {self.mid}{for_clause};\r\n"
            f"\t{_date_now()}\r\n"
        )
        return header.encode("utf-8", "surrogateescape")



def parameters(text: str) -> Parameters | None:
    """The ``KEYWORD[=value]`` parameters after a MAIL or RCPT path: keywords upper-cased,
    values as written (ENVID and ORCPT are case-sensitive xtext); None for a syntax error
    or a keyword given twice."""
    params: Parameters = {}
    for word in text.split(" "):
        if not word:
            continue
        keyword, eq, value = word.partition("=")
        keyword = keyword.upper()
        if not _KEYWORD.match(keyword) or (eq and not value) or keyword in params:
            return None
        params[keyword] = value if eq else None
    return params


_SIZE_ERROR = "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n]"
_BODY_ERROR = "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
_RET_ERROR = "501 5.5.4 Bad RET parameter syntax"
_ENVID_ERROR = "501 5.5.4 Bad ENVID parameter syntax"
_NOTIFY_ERROR = "501 5.5.4 Error: Bad NOTIFY parameter syntax"
_ORCPT_ERROR = "501 5.5.4 Error: Bad ORCPT parameter syntax"


def mail_options(params: Parameters, dsn: bool) -> MailOptions | str:
    """MAIL's parameters (SIZE, BODY, SMTPUTF8, and RET and ENVID when DSN is offered) or the
    error reply, as Postfix words them."""
    params = dict(params)
    errors = {"SIZE": _SIZE_ERROR, "BODY": _BODY_ERROR, **({"RET": _RET_ERROR, "ENVID": _ENVID_ERROR} if dsn else {})}
    for keyword, error in errors.items():
        if keyword in params and params[keyword] is None:  # a keyword these need a value for
            return error
    size: int | None = None
    value = params.pop("SIZE", None)
    if value is not None:
        if not value.isdigit() or not value.isascii():
            return _SIZE_ERROR
        size = int(value)
    body = params.pop("BODY", None)
    if body is not None:
        body = body.upper()
        if body not in ("7BIT", "8BITMIME"):
            return _BODY_ERROR
    smtputf8 = "SMTPUTF8" in params
    if smtputf8 and params.pop("SMTPUTF8") is not None:
        return "501 5.5.4 Bad SMTPUTF8 parameter syntax"
    ret = envid = None
    if dsn:
        ret = params.pop("RET", None)
        if ret is not None:
            ret = ret.upper()
            if ret not in ("FULL", "HDRS"):
                return _RET_ERROR
        envid = params.pop("ENVID", None)
        if envid is not None and (len(envid) > 100 or not _XTEXT.match(envid)):
            return _ENVID_ERROR
    if params:
        return "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    return MailOptions(size, body, smtputf8, ret, envid)


def rcpt_options(params: Parameters, dsn: bool, utf8: bool) -> RcptOptions | str:
    """RCPT's NOTIFY and ORCPT (RFC 3461, and RFC 6533's UTF-8 ORCPT once the client declared
    SMTPUTF8) when DSN is offered, or the error reply."""
    params = dict(params)
    notify = orcpt = None
    if dsn:
        for keyword, error in (("NOTIFY", _NOTIFY_ERROR), ("ORCPT", _ORCPT_ERROR)):
            if keyword in params and params[keyword] is None:
                return error
        notify = params.pop("NOTIFY", None)
        if notify is not None:
            notify = notify.upper()
            values = notify.split(",")
            if not (values == ["NEVER"] or (set(values) <= _NOTIFY and len(set(values)) == len(values))):
                return _NOTIFY_ERROR
        orcpt = params.pop("ORCPT", None)
        if orcpt is not None:
            addr_type, _, address = orcpt.partition(";")
            text = _UNITEXT if utf8 and addr_type.lower() == "utf-8" else _XTEXT
            if len(orcpt) > 500 or not _ADDR_TYPE.match(addr_type) or not text.match(address):
                return _ORCPT_ERROR
    if params:
        return "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    return RcptOptions(notify, orcpt)
