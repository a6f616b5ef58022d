"""MAIL and RCPT parameters as the session reads them (RFC 5321 4.1.2, RFC 3461 DSN, RFC 6531
SMTPUTF8): values keep their case, each is validated, and DSN is read only when offered."""

from __future__ import annotations

import pytest

from netpolicy.smtp.delivery import MailOptions, RcptOptions
from netpolicy.smtp.paths import parse_path
from netpolicy.smtp.session import mail_options, parameters, rcpt_options


def test_parameters_keep_the_case_of_values_and_refuse_repeats() -> None:
    assert parameters("size=10 ENVID=AbC+2Bd  SMTPUTF8") == {"SIZE": "10", "ENVID": "AbC+2Bd", "SMTPUTF8": None}
    assert parameters("") == {}
    for bad in ("SIZE=1 size=2", "=x", "BODY=", "-X=1", "X_Y=1"):
        assert parameters(bad) is None, bad


def test_mail_options() -> None:
    got = mail_options({"SIZE": "99", "BODY": "8bitmime", "SMTPUTF8": None, "RET": "hdrs", "ENVID": "Q+2Bx"}, dsn=True)
    assert got == MailOptions(99, "8BITMIME", True, "HDRS", "Q+2Bx")
    assert mail_options({}, dsn=True) == MailOptions()


@pytest.mark.parametrize(("params", "dsn", "reply"), [
    ({"SIZE": "x"}, True, "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n]"),
    ({"SIZE": None}, True, "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n]"),
    ({"BODY": "BINARYMIME"}, True, "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ({"BODY": None}, True, "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ({"RET": None}, True, "501 5.5.4 Bad RET parameter syntax"),
    ({"ENVID": None}, True, "501 5.5.4 Bad ENVID parameter syntax"),
    ({"SMTPUTF8": "yes"}, True, "501 5.5.4 Bad SMTPUTF8 parameter syntax"),
    ({"RET": "ALL"}, True, "501 5.5.4 Bad RET parameter syntax"),
    ({"ENVID": "a=b"}, True, "501 5.5.4 Bad ENVID parameter syntax"),
    ({"ENVID": "x" * 101}, True, "501 5.5.4 Bad ENVID parameter syntax"),
    ({"ENVID": "caf\u00e9"}, True, "501 5.5.4 Bad ENVID parameter syntax"),
    ({"RET": "FULL"}, False, "555 5.5.4 MAIL FROM parameters not recognized or not implemented"),  # no DSN offered
    ({"AUTH": "<>"}, True, "555 5.5.4 MAIL FROM parameters not recognized or not implemented"),
])
def test_mail_options_refused(params: dict[str, str | None], dsn: bool, reply: str) -> None:
    assert mail_options(params, dsn=dsn) == reply


def test_rcpt_options() -> None:
    assert rcpt_options({"NOTIFY": "failure,delay", "ORCPT": "rfc822;B+2Bc@example.test"}, dsn=True, utf8=False) == \
        RcptOptions("FAILURE,DELAY", "rfc822;B+2Bc@example.test")
    assert rcpt_options({"ORCPT": "utf-8;\u7528\u6237@example.test"}, dsn=True, utf8=True) == \
        RcptOptions(None, "utf-8;\u7528\u6237@example.test")


@pytest.mark.parametrize(("params", "dsn", "utf8", "reply"), [
    ({"NOTIFY": "NEVER,SUCCESS"}, True, False, "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    ({"NOTIFY": "DELAY,DELAY"}, True, False, "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    ({"NOTIFY": "SOMETIMES"}, True, False, "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    ({"NOTIFY": None}, True, False, "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    ({"ORCPT": None}, True, False, "501 5.5.4 Error: Bad ORCPT parameter syntax"),
    ({"ORCPT": "b@example.test"}, True, False, "501 5.5.4 Error: Bad ORCPT parameter syntax"),  # no addr-type
    ({"ORCPT": "utf-8;\u7528@example.test"}, True, False, "501 5.5.4 Error: Bad ORCPT parameter syntax"),  # not declared
    ({"ORCPT": "rfc822;" + "b" * 500}, True, False, "501 5.5.4 Error: Bad ORCPT parameter syntax"),
    ({"NOTIFY": "NEVER"}, False, False, "555 5.5.4 RCPT TO parameters not recognized or not implemented"),
])
def test_rcpt_options_refused(params: dict[str, str | None], dsn: bool, utf8: bool, reply: str) -> None:
    assert rcpt_options(params, dsn=dsn, utf8=utf8) == reply


def test_utf8_paths_but_never_a_control_character() -> None:
    assert parse_path("<\u7528\u6237@\u4f8b\u5b50.test> SMTPUTF8", reverse=True) == ("\u7528\u6237@\u4f8b\u5b50.test", "SMTPUTF8")
    assert parse_path('<"caf\u00e9 x"@example.test>', reverse=False) == ('"caf\u00e9 x"@example.test', "")
    for control in ("\u0085", "\u009f", "\x00", "\x7f"):
        assert parse_path(f"<a{control}@example.test>", reverse=False) is None, repr(control)
