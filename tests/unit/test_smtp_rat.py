"""The Recipient Access Table: first match wins; no match refuses."""

from __future__ import annotations

from netpolicy.model.policy import RatRow
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


def test_the_whole_address_is_judged() -> None:
    """A row matches only an RFC 5321 mailbox, never the tail of something else."""
    table = rat(("example.test", "accept"), (".example.test", "accept"), ("ALL", "reject"))
    assert table.accepts("u@sub.example.test")
    for address in ("u@x.test\x00.example.test", "u@x.test\x01.example.test", "u\x00@example.test",
                    "u@example.test.", "u@-x.example.test", "u@x..example.test", "u @example.test", "example.test"):
        assert not table.accepts(address), repr(address)


def test_sender_specified_routing_is_refused_whatever_the_rows() -> None:
    """Postfix's allow_untrusted_routing = no: the RAT never forwards through a domain of ours."""
    routed = ("u%other.test@example.test", "other.test!u@example.test", '"u@other.test"@example.test',
              '"u%other.test"@example.test', "@example.test:u@other.test", "@a,@b:u@example.test")
    for table in (rat(("example.test", "accept")), rat(("ALL", "accept"))):
        for address in routed:
            assert not table.accepts(address), address
        assert table.accepts('"u.v w"@example.test')  # a quoted local part is not routing by itself
    assert all(Rat.open().accepts(address) for address in routed)  # RELAY and private listeners: unchanged


def test_bare_postmaster_is_always_accepted() -> None:
    """RFC 5321 section 4.5.1: ``<postmaster>`` without a domain, in any case, on every listener."""
    table = rat(("example.test", "accept"), ("ALL", "reject"))
    for address in ("postmaster", "PostMaster", "POSTMASTER"):
        assert table.accepts(address)
    assert not table.accepts("postmaster@other.test")  # with a domain, the rows decide
    assert not table.accepts("postmistress")
