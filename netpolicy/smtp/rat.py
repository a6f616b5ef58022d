"""Recipient Access Table: which recipients a public listener takes mail for.

First match wins, like the appliance: ``example.test`` is that domain, ``.example.test`` any
subdomain of it, ``user@example.test`` one address, ``ALL`` everything. A recipient no row
matches is refused, so a RAT without a final ``ALL`` row still cannot make an open relay.
Comparison ignores case (domains are case-insensitive, and the appliance treats local parts the
same way).

Private listeners have no RAT (they exist to relay for trusted hosts), and RELAY policies skip
it: ``Rat.open()`` is the table that accepts everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from netpolicy.policy.model import RatRow


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
        if self.accept_all:
            return True
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
