"""The SMTP side of netpolicy: every mail flow policy behaviour the kernel does not enforce.

Built on aiosmtpd 1.4.6 (pinned: ``session.PolicySMTP`` replaces its connect path). Modules:

- ``listener``: ``SmtpListener`` (the API ``serve`` calls), ``SessionLimits``, ``ListenerStats``.
- ``session``: ``PolicySMTP``, one connection: decision before the banner, limits, RAT, TLS.
- ``counters``: per-client-address state across connections (``Counters``, in-memory impl).
- ``delivery``: lossless hand-off to a Maildir or a next hop (250 only once the mail is safe).
- ``lines``: strict CRLF line reading (smuggling defence), size enforced while reading.
- ``rat``: the Recipient Access Table.

The mail log is ``netpolicy.maillog.MailLog``.
"""

from netpolicy.smtp.counters import Counters, InMemoryCounters
from netpolicy.smtp.listener import ListenerStats, OffenceHook, SessionLimits, SmtpListener

__all__ = ["Counters", "InMemoryCounters", "ListenerStats", "OffenceHook", "SessionLimits", "SmtpListener"]
