"""Recipient Access Table: which recipients a public listener takes mail for.

First match wins, like the appliance: ``example.test`` is that domain, ``.example.test`` any
subdomain of it, ``user@example.test`` one address, ``ALL`` everything. A recipient no row
matches is refused, so a RAT without a final ``ALL`` row still cannot make an open relay.
Comparison ignores case (domains are case-insensitive, and the appliance treats local parts the
same way).

Private listeners have no RAT (they exist to relay for trusted hosts), and RELAY policies skip
it: ``Rat.open()`` is the table that accepts everything.

The table judges the whole address, before any row:

- The bare ``postmaster`` (any case, no domain) is accepted: RFC 5321 section 4.5.1 requires
  every SMTP server to take it. It goes where the listener delivers (stored in Maildir mode,
  passed on as ``postmaster`` to a next hop), like mail for a postmaster@ of its domains.
- Anything that is not an RFC 5321 mailbox is refused, so no row can match a piece of it
  (``.example.test`` would match the tail of the domain ``x.test\\x00.example.test``).
- Sender-specified routing is refused with the RAT's 550 5.7.1, whatever the rows say:
  percent hack (``u%x.test@example.test``), bang path (``x.test!u@example.test``), a quoted
  ``@`` (``"u@x.test"@example.test``) and source routes (``@a,@b:u@example.test``). They are
  valid RFC 5321 syntax, so this is a relay refusal, not a 553: the address names one of our
  domains only to have it forwarded elsewhere, and a next hop with Postfix's
  ``allow_percent_hack`` or ``swap_bangpath`` would do just that. It is Postfix's
  ``allow_untrusted_routing = no`` (its default), which "closes a nasty open relay loophole
  where a backup MX host can be tricked into forwarding junk mail to a primary MX host which
  then spams it out to the world" (postconf(5)); such addresses cannot match its access tables
  either, "because the address is ambiguous". Clients trusted to relay may route, as with
  ``permit_mynetworks`` ahead of ``reject_unauth_destination`` in Postfix's
  ``smtpd_relay_restrictions``: RELAY policies and private listeners skip the RAT, and their
  addresses reach the next hop unchanged, for its own rewriting rules. Postfix strips source
  routes rather than refusing them (RFC 5321 section 3.6.1: a server SHOULD ignore them, or
  MAY decline them); they are refused here so the RAT never judges another address than the
  one passed on, and clients SHOULD NOT send them anyway (RFC 5321 appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass

from netpolicy.model.policy import RatRow
from netpolicy.smtp.paths import is_mailbox, is_postmaster, is_routed


@dataclass(frozen=True)
class Rat:
    rows: tuple[tuple[str, bool], ...]  # (lower-case pattern, accept)
    accept_all: bool = False

    @classmethod
    def from_rows(cls, rows: list[RatRow] | None) -> "Rat":
        if rows is None:
            return cls.open()
        return cls(tuple((r.recipient if r.recipient == "ALL" else r.recipient.lower(), r.action == "accept") for r in rows))

    @classmethod
    def open(cls) -> "Rat":
        return cls((), accept_all=True)

    def accepts(self, recipient: str) -> bool:
        if self.accept_all or is_postmaster(recipient):
            return True
        if not is_mailbox(recipient) or is_routed(recipient):
            return False
        address = recipient.lower()
        domain = address.rpartition("@")[2]
        for pattern, accept in self.rows:
            if pattern == "ALL":
                return accept
            if "@" in pattern:
                if address == pattern:
                    return accept
            elif pattern.startswith("."):
                if domain.endswith(pattern):
                    return accept
            elif domain == pattern:
                return accept
        return False
