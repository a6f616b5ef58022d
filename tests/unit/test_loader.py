"""Policy loading: the example works as written; every error names file and line, all at once."""

import gc
from pathlib import Path

import pytest

from netpolicy.model import PolicyError, load_policy, parse_policy
from netpolicy.model.yamltree import read_yaml

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yml"


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yml")
    return [str(p) for p in info.value.problems]


def example() -> str:
    return EXAMPLE.read_text()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert [lst.name for lst in policy.listeners] == ["IncomingMail"]
    assert policy.mail_flow_policies["THROTTLED"].max_rcpts_per_hour == 20
    assert len(policy.sender_groups["BLACKLIST"]) == 4


def test_generation_is_stable_and_changes_with_content() -> None:
    a = parse_policy(example()).generation()
    assert a == parse_policy(example() + "\n# a comment\n").generation()
    assert a != parse_policy(example().replace("127.0.0.66", "127.0.0.67")).generation()


def test_all_errors_at_once_with_lines() -> None:
    text = example().replace("127.0.0.77", "127.0.0.300").replace("max_concurrency: 50", "max_concurency: 50")
    text = text.replace("port: 2525", "port: 99999")
    got = errors(text)
    assert f"p.yml:{line_of(text, '127.0.0.300')}: sender_groups.REJECTLIST.0: '127.0.0.300' is not an IPv4 address" in got
    assert f"p.yml:{line_of(text, 'max_concurency')}: unknown key 'max_concurency'" in got
    assert any(e.startswith(f"p.yml:{line_of(text, 'port: 99999')}:") for e in got)
    assert len(got) == 3


def test_reference_errors_with_lines() -> None:
    text = example().replace("group: SUSPECTLIST", "group: SUSPECT").replace("policy: ACCEPTED}", "policy: NOPE}")
    got = errors(text)
    assert got == [
        f"p.yml:{line_of(text, 'SUSPECT,')}: unknown sender group 'SUSPECT'",
        f"p.yml:{line_of(text, 'NOPE')}: unknown mail flow policy 'NOPE'",
    ]


def test_hat_must_end_with_all() -> None:
    text = example().replace("      - {group: ALL, policy: ACCEPTED}\n", "")
    assert any("must end with the group ALL" in e for e in errors(text))
    moved = example().replace("      - {group: RELAYLIST, policy: RELAYED}\n", "      - {group: ALL, policy: ACCEPTED}\n      - {group: RELAYLIST, policy: RELAYED}\n", 1)
    assert any(f":{line_of(moved, 'group: ALL')}: ALL must be the last HAT entry" in e for e in errors(moved))


def test_rat_on_private_listener_is_an_error() -> None:
    text = example().replace("type: public ", "type: private")
    assert errors(text) == [f"p.yml:{line_of(text, '    rat:')}: a private listener has no RAT (it is meant for relaying)"]


def test_partial_entry_is_not_read_as_a_number() -> None:
    policy = parse_policy(example().replace("WHITELIST: [127.0.0.10]", "WHITELIST: [10., 10.1]"))
    assert [e.text for e in policy.sender_groups["WHITELIST"]] == ["10.", "10.1"]


def test_yaml_syntax_error_has_line() -> None:
    got = errors("version: 1\nlisteners: [\n  {name: a\n")
    assert len(got) == 1 and got[0].startswith("p.yml:") and "YAML" in got[0]


def test_duplicate_key_and_missing_file(tmp_path: Path) -> None:
    text = example().replace("  RELAYLIST: []\n", "  RELAYLIST: []\n  RELAYLIST: []\n")
    assert any("duplicate key 'RELAYLIST'" in e for e in errors(text))
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yml")


def test_tls_policy_needs_certificate() -> None:
    text = example().replace("ACCEPTED:  {behavior: accept}", "ACCEPTED:  {behavior: accept, tls: required}")
    assert any("uses tls but the listener has no tls_cert" in e for e in errors(text))


def test_entry_lines_hold_when_plain_tagged_and_nested_entries_mix() -> None:
    """Plain entries take yamltree's short path, the others the general one: one list of lines."""
    group = "RELAYLIST:\n    - 10.0.0.1\n    - !!str 10.0.0.300\n    - {a: 1}\n    - 10.0.0.400\n    - ALL\n"
    text = example().replace("RELAYLIST: []\n", group)
    got = errors(text)
    assert f"p.yml:{line_of(text, '10.0.0.300')}: sender_groups.RELAYLIST.1: '10.0.0.300' is not an IPv4 address" in got
    assert f"p.yml:{line_of(text, '{a: 1}')}: sender_groups.RELAYLIST.2: entry must be a string, not dict" in got
    assert f"p.yml:{line_of(text, '10.0.0.400')}: sender_groups.RELAYLIST.3: '10.0.0.400' is not an IPv4 address" in got
    assert f"p.yml:{line_of(text, '- ALL')}: ALL is only valid as the HAT group ALL" in got


def test_entries_get_no_path_key_each() -> None:
    """A path tuple and a dict slot per entry was 60% of reading a 100k-entry group."""
    read = read_yaml(example().replace("RELAYLIST: []", "RELAYLIST: [" + "10.0.0.1, " * 5000 + "]"))
    assert len(read.data["sender_groups"]["RELAYLIST"]) == 5000
    assert len(read.lines) < 200
    assert read.line(("sender_groups", "RELAYLIST", 4999)) == line_of(example(), "RELAYLIST: []")


def test_a_nul_inside_an_entry_is_a_located_problem() -> None:
    text = example().replace("WHITELIST: [127.0.0.10]", 'WHITELIST: ["127.0.0.10\\0/32"]')
    line = line_of(text, "WHITELIST: [\"")
    assert errors(text) == [f"p.yml:{line}: sender_groups.WHITELIST.0: '127.0.0.10\\x00' is not an IPv4 address"]


def test_the_collector_is_left_as_it_was_found() -> None:
    """Loading pauses the cyclic collector; a refused policy must not leave it off, nor turn on
    one the caller had turned off."""
    assert gc.isenabled()
    errors(example().replace("127.0.0.77", "127.0.0.300"))
    assert gc.isenabled()
    gc.disable()
    try:
        parse_policy(example())
        assert not gc.isenabled()
    finally:
        gc.enable()
