"""Values that reach the wire, the kernel or the file system are refused at load, with their line.

Unchecked, a CR LF in a reply text is reply injection (``220 hi\\r\\n250-x``), ``port: true`` is
port 1, and ``maildir: ''`` is a Maildir in the working directory. Each refused case names the
line of the value; each accepted case is a real value that must keep working.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netpolicy.model import PolicyError, parse_policy

EXAMPLE = (Path(__file__).parents[2] / "examples" / "policy.yml").read_text()
POLICY_LINE = "  ACCEPTED:  {behavior: accept}"


def with_policy_param(key: str, value: str) -> str:
    return EXAMPLE.replace(POLICY_LINE, f"  ACCEPTED:  {{behavior: accept, {key}: {value}}}")


def with_listener_key(key: str, value: str) -> str:
    """The listener's ``key`` set to ``value``, in place of the example's own line if it has one."""
    text, count = re.subn(rf"(?m)^    {key}: \S+", lambda _: f"    {key}: {value}", EXAMPLE)
    return text if count else EXAMPLE.replace("    kernel: true", f"    kernel: true\n    {key}: {value}")


def with_delivery(value: str) -> str:
    return EXAMPLE.replace("      maildir: var/maildir", f"      {value}")


def param_line(text: str) -> int:
    return line_of(text, "ACCEPTED:  {behavior: accept,")


def refusal(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yml")
    assert len(info.value.problems) == 1, info.value.problems
    return str(info.value.problems[0])


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


TEXT_FIELDS = ["smtp_banner_text", "reject_banner_text", "rate_limit_text", "dhap_text"]
BAD_TEXTS = {
    "CR LF": r'"hi\r\n250-x"',
    "LF": r'"hi\n250 ok"',
    "CR": r'"hi\r250 ok"',
    "NUL": r'"hi\0"',
    "ESC": r'"\e[31mred"',
    "DEL": r'"hi\x7f"',
    "C1 NEL": r'"hi\N"',
    "longer than a reply line": '"' + "x" * 401 + '"',
}


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("case", BAD_TEXTS)
def test_reply_text_with_control_characters_is_refused(field: str, case: str) -> None:
    text = with_policy_param(field, BAD_TEXTS[case])
    assert refusal(text).startswith(f"p.yml:{param_line(text)}: mail_flow_policies.ACCEPTED.{field}:")


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_reply_text_with_variables_and_unicode_is_accepted(field: str) -> None:
    policy = parse_policy(with_policy_param(field, '"$Hostname says: $RemoteIP in $Group, grüße"'))
    assert getattr(policy.mail_flow_policies["ACCEPTED"], field).endswith("grüße")


@pytest.mark.parametrize("value", [r'"mx\r\n250-x"', "mx.example.test\\", "'bad host'", "-mx.example.test", "mx_1.example.test",
                                   "a" * 64 + ".example.test", "'" + "a." * 127 + "ab'", "''", "'[192.0.2.1]'"])
def test_hostname_must_be_a_host_name(value: str) -> None:
    text = EXAMPLE.replace("hostname: mx.example.test", f"hostname: {value}")
    assert refusal(text).startswith(f"p.yml:{line_of(text, 'hostname:')}: listeners.0.hostname:")


@pytest.mark.parametrize("value", ["mx.example.test", "localhost", "mx.example.test.", "MX-1.Example.TEST", "a" * 63])
def test_hostname_accepted(value: str) -> None:
    assert parse_policy(EXAMPLE.replace("hostname: mx.example.test", f"hostname: {value}")).listeners[0].hostname == value


@pytest.mark.parametrize("value", ["true", "false", "0", "65536", "-1", "'2525'", "2525.0", "1e3", "99999999999999999999"])
def test_port_is_a_strict_integer_in_range(value: str) -> None:
    text = EXAMPLE.replace("port: 2525", f"port: {value}")
    assert refusal(text).startswith(f"p.yml:{line_of(text, 'port:')}: listeners.0.port:")


@pytest.mark.parametrize("value", ["1", "65535", "0x9dd"])
def test_port_accepted(value: str) -> None:
    assert 0 < parse_policy(EXAMPLE.replace("port: 2525", f"port: {value}")).listeners[0].port < 65536


INT_FIELDS = ["max_msgs_per_session", "max_rcpts_per_msg", "max_message_size", "max_concurrency", "max_rcpts_per_hour",
              "dhap_limit", "promote_after", "promote_for"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", ["true", "1.5", "10.0", "1e29", "1.0e+29", "'10'", "0", "-3", str(2**31 + 1)])
def test_integer_parameters_are_strict_and_bounded(field: str, value: str) -> None:
    text = with_policy_param(field, value)
    assert refusal(text).startswith(f"p.yml:{param_line(text)}: mail_flow_policies.ACCEPTED.{field}:")


def test_size_and_promotion_bounds() -> None:
    assert parse_policy(with_policy_param("max_message_size", str(2**31))).mail_flow_policies["ACCEPTED"].max_message_size == 2**31
    assert parse_policy(with_policy_param("promote_for", "2147483")).mail_flow_policies["ACCEPTED"].promote_for == 2147483
    assert "promote_for" in refusal(with_policy_param("promote_for", "2147484"))


@pytest.mark.parametrize(("field", "bad", "good"), [
    ("smtp_banner_code", ["421", "554", "true", "'220'", "220.0"], ["220", "250"]),
    ("reject_banner_code", ["250", "600", "399", "true", "'554'"], ["421", "554"]),
    ("rate_limit_code", ["250", "600", "false", "452.0"], ["452", "550"]),
    ("dhap_code", ["250", "600", "550.0"], ["450", "550"]),
])
def test_reply_codes_stay_in_their_class(field: str, bad: list[str], good: list[str]) -> None:
    for value in bad:
        text = with_policy_param(field, value)
        assert refusal(text).startswith(f"p.yml:{param_line(text)}: mail_flow_policies.ACCEPTED.{field}:"), value
    for value in good:
        assert getattr(parse_policy(with_policy_param(field, value)).mail_flow_policies["ACCEPTED"], field) == int(value)


@pytest.mark.parametrize("value", ["maildir: ''", r'maildir: "var/\0x"', r'maildir: "var/\nx"', "next_hop: ''", "next_hop: ':25'",
                                   "next_hop: '[]:25'", "next_hop: 'mx.example.test:0'", "next_hop: 'mx.example.test:²5'",
                                   "next_hop: 'bad host:25'", "next_hop: 'mx.example.test'"])
def test_delivery_sink_is_never_empty_or_malformed(value: str) -> None:
    text = with_delivery(value)
    assert refusal(text).startswith(f"p.yml:{line_of(text, value.split(':')[0] + ':')}:")


@pytest.mark.parametrize("value", ["next_hop: 127.0.0.1:10025", "next_hop: '[2001:db8::1]:25'", "next_hop: mx.example.test:25"])
def test_next_hop_accepted(value: str) -> None:
    assert parse_policy(with_delivery(value)).listeners[0].delivery.next_hop is not None


@pytest.mark.parametrize(("key", "value"), [("tls_cert", "''"), ("tls_key", r'"a\nb"'), ("delayed_reject", "1"),
                                            ("delayed_reject", "'true'"), ("kernel", "0")])
def test_listener_paths_and_flags(key: str, value: str) -> None:
    text = with_listener_key(key, value)
    assert refusal(text).startswith(f"p.yml:{line_of(text, key + ': ' + value)}: listeners.0.{key}:")


@pytest.mark.parametrize("value", ["true", "1.0", "'1'"])
def test_version_is_the_number_1(value: str) -> None:
    text = EXAMPLE.replace("version: 1", f"version: {value}")
    assert refusal(text) == f"p.yml:{line_of(text, 'version:')}: version: must be the number 1"


def test_group_and_policy_names_carry_no_control_characters() -> None:
    """Both reach the wire through $Group and $Policy, and the mail log; the message stays one line."""
    text = EXAMPLE.replace("  RELAYLIST: []", '  "RELAY\\r\\nLIST": []')
    line = line_of(text, "RELAY\\r")
    assert refusal(text) == f"p.yml:{line}: sender_groups.'RELAY\\r\\nLIST'.[key]: control character U+000D is not allowed" \
        " (CR and LF would end the reply line)"
    text = EXAMPLE.replace(POLICY_LINE, POLICY_LINE + '\n  "X\\rY": {behavior: accept}')
    assert refusal(text).startswith(f"p.yml:{line_of(text, 'X')}: mail_flow_policies.'X\\rY'.[key]: control character U+000D")
