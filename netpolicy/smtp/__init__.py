"""The SMTP side of netpolicy: every mail flow policy behaviour the kernel does not enforce.

Built on aiosmtpd 1.4.6 (pinned: ``session.PolicySMTP`` replaces its connect path). Modules:

- ``listener``: ``SmtpListener`` (the API ``serve`` calls): the socket and its sessions.
- ``services``: what sessions share: ``SessionLimits``, ``ListenerStats``, the ``Generation``.
- ``session``: ``PolicySMTP``, one connection: decision before the banner, limits, RAT, TLS.
- ``paths``: MAIL/RCPT paths read by RFC 5321's grammar.
- ``rat``: the Recipient Access Table.
- ``counters``: per-client-address state across connections (``Counters``, in-memory impl).
- ``redis_counters`` and ``resp``: the same counters in the policy's shared state store (Redis),
  over a lean pipelined RESP2 client, falling back to the in-memory ones while it is away.
- ``lines`` and ``spool``: strict CRLF reading (smuggling defence), a message held once.
- ``delivery``: lossless hand-off to a Maildir or a next hop (250 only once the mail is safe).
- ``resolver``: forward-confirmed reverse DNS, DNS lists and the reputation score.
- ``scanner``: message checks (spam, viruses, SPF/DKIM/DMARC) asked of rspamd at the end of DATA.
- ``maillog``: the mail log in the appliance's format.
- ``fds``: descriptor headroom (new sessions get 421 before the process runs out).

Nothing here touches the kernel: ``netpolicy.daemon`` joins this side and ``netpolicy.kernel``.
"""

from netpolicy.smtp.counters import Counters, InMemoryCounters
from netpolicy.smtp.listener import SmtpListener
from netpolicy.smtp.services import ListenerStats, OffenceHook, SessionLimits

__all__ = ["Counters", "InMemoryCounters", "ListenerStats", "OffenceHook", "SessionLimits", "SmtpListener"]
