"""RFC 5321 envelope paths, read strictly: what Postfix takes with ``strict_rfc821_envelopes``.

aiosmtpd reads MAIL and RCPT arguments with the email package's RFC 5322 parser, which is
lenient where an envelope must not be. Measured on this gateway: it took ``<s@x.test`` (no
``>``) and ``s@x.test`` (no brackets); it kept NUL and 0x01 inside addresses, so a RAT row
``.example.test`` accepted ``u@x.test\\x00.example.test`` and aiosmtplib raised on it at the
next hop; it folded ``<u @example.test>`` into another address and dropped the source route of
``<@a,@b:u@example.test>`` before anything could judge it. It also costs a tenth of a
millisecond per address. The grammar below is RFC 5321 section 4.1.2's, printable ASCII, with
RFC 6531 section 3.3's additions (any non-ASCII character but a C1 control in atoms, quoted
strings and domain labels) for clients that declared SMTPUTF8, so a control character can
never be part of an address.

Routing forms stay as written: a source route is kept in the address (``@a,@b:u@x.test``),
and ``%`` and ``!`` are plain atext. Whether they may pass is the RAT's call (``rat.py``).
"""

from __future__ import annotations

import re

_UTF8 = "\u00a0-\U0010ffff"  # UTF8-non-ascii without the C1 controls
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_UTF8}-]"
_LOCAL = rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*\")"
# Each alternative is unambiguous (labels are runs of letters and digits joined by hyphen
# runs), so a hostile line costs linear time, not exponential backtracking.
_LABEL = rf"[A-Za-z0-9{_UTF8}]+(?:-+[A-Za-z0-9{_UTF8}]+)*"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"{_LOCAL}@(?:{_DOMAIN}|{_LITERAL})"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
# ``<>`` and the bare ``<postmaster>`` (any case) of RFC 5321 section 4.1.1.3, or a path;
# then optional parameters after spaces, printable too (an ORCPT may carry UTF-8).
_PATH = re.compile(rf"<(|(?i:postmaster)|(?:{_ROUTE})?{_MAILBOX})>(?: +([\x20-\x7e{_UTF8}]*))?\Z")
_MAILBOX_ONLY = re.compile(_MAILBOX)
_ROUTING = frozenset("@%!")


def parse_path(text: str, reverse: bool) -> tuple[str, str] | None:
    """``(address, parameters)`` of ``<path> [params]``, or None when it is not RFC 5321.

    ``reverse`` (MAIL FROM) allows ``<>``; a forward path (RCPT TO) allows the bare
    ``<postmaster>`` instead, as RFC 5321 section 4.5.1 requires. The address is returned as
    the client wrote it, source route included; whether a non-ASCII one may be used (the
    client declared SMTPUTF8) is the session's call.
    """
    match = _PATH.match(text)
    if match is None:
        return None
    address = match.group(1)
    if (address == "" and not reverse) or (reverse and is_postmaster(address)):
        return None
    return address, match.group(2) or ""


def is_postmaster(address: str) -> bool:
    """The domain-less postmaster every SMTP server must accept (case-insensitive)."""
    return address.lower() == "postmaster"


def is_mailbox(address: str) -> bool:
    """``local@domain`` with no source route and nothing outside the RFC 5321 grammar."""
    return _MAILBOX_ONLY.fullmatch(address) is not None


def is_routed(address: str) -> bool:
    """Sender-specified routing: ``@``, ``%`` or ``!`` in the local part (quoted or not).

    ``u%x.test@example.test`` (percent hack), ``x.test!u@example.test`` (bang path),
    ``"u@x.test"@example.test`` and a source route ``@a:u@example.test`` all ask the host
    named last to pass the mail on to another.
    """
    return not _ROUTING.isdisjoint(address.rpartition("@")[0])
