"""The Recipient Access Table: first match wins; no match refuses."""

from __future__ import annotations

from netpolicy.policy.model import RatRow
from netpolicy.smtp.rat import Rat


def rat(*rows: tuple[str, str]) -> Rat:
    return Rat.from_rows([RatRow(recipient=r, action=a) for r, a in rows])  # type: ignore[arg-type]


def test_forms_and_order() -> None:
    table = rat(("blocked@example.test", "reject"), ("example.test", "accept"), (".example.test", "accept"),
                ("postmaster@other.test", "accept"), ("ALL", "reject"))
    assert table.accepts("user@example.test")
    assert table.accepts("User@EXAMPLE.test")
    assert not table.accepts("blocked@example.test")  # an earlier row wins
    assert table.accepts("x@deep.sub.example.test")
    assert not table.accepts("x@notexample.test")
    assert table.accepts("postmaster@other.test")
    assert not table.accepts("root@other.test")


def test_domain_row_does_not_cover_subdomains_and_no_match_refuses() -> None:
    table = rat(("example.test", "accept"))
    assert table.accepts("a@example.test")
    assert not table.accepts("a@sub.example.test")
    assert not table.accepts("a@elsewhere.test")


def test_open_table_and_private_listeners() -> None:
    assert Rat.open().accepts("anyone@anywhere.test")
    assert Rat.from_rows(None).accepts("anyone@anywhere.test")
    assert rat(("ALL", "accept")).accepts("a@b.test")
