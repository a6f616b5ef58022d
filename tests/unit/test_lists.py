"""``file:`` lists (SPEC.md section 7): any address form per line, errors as ``list:LINE``, read
again only when the file changed, compiled and decided like address entries."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from netpolicy.model import PolicyError, load_policy
from netpolicy.model.compiler import compile_policy
from netpolicy.model.entries import AddressSetEntry, address_to_int
from netpolicy.model.hat import build_hat_indexes
from netpolicy.model.intervals import cidr_texts
from netpolicy.model import lists
from netpolicy.model.lists import parse_list, read_list
from netpolicy.model.loader import MAX_REPORTED, source_files
from netpolicy.model.policy import Policy

POLICY = """\
version: 1
listeners:
  - name: In
    address: 10.0.0.1
    port: 25
    hat:
      - {{group: WL, policy: OK}}
      - {{group: BL, policy: BLOCKED}}
      - {{group: ALL, policy: OK}}
    rat: [{{recipient: ALL, action: accept}}]
sender_groups:
  WL: [192.0.2.2]
  BL: [{entries}]
mail_flow_policies:
  OK: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
"""


def write_policy(tmp_path: Path, lists: dict[str, str], entries: str = '"file:lists/drop.txt"') -> Path:
    for name, text in lists.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / "policy.yml"
    path.write_text(POLICY.format(entries=entries))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def the_set(policy: Policy, group: str = "BL") -> AddressSetEntry:
    entry = policy.sender_groups[group][0]
    assert isinstance(entry, AddressSetEntry)
    return entry


def texts(spans: tuple[tuple[int, int], ...], version: int = 4) -> list[str]:
    from netpolicy.model.intervals import versioned

    return cidr_texts(versioned(version, spans))


def test_every_address_form_comments_and_blank_lines(tmp_path: Path) -> None:
    listed = (
        "# FireHOL-style comment\n"
        "192.0.2.9\n"
        "  192.0.2.10  # trailing comment\n"
        "198.51.100.0/25 ; SBL123 (Spamhaus DROP style)\n"
        "\n"
        "10.1.1.0-3\n"
        "10.2.0.0-10.2.0.255\n"
        "10.3.\n"
        "2001:db8:bad::/48\n"
        "2001:db8::7\r\n"
    )
    policy = load_policy(write_policy(tmp_path, {"lists/drop.txt": listed}))
    entry = the_set(policy)
    assert texts(entry.v4) == ["10.1.1.0/30", "10.2.0.0/24", "10.3.0.0/16", "192.0.2.9/32", "192.0.2.10/32", "198.51.100.0/25"]
    assert texts(entry.v6, 6) == ["2001:db8::7/128", "2001:db8:bad::/48"]
    assert entry.text == "file:lists/drop.txt"
    assert entry.source == str(tmp_path / "lists" / "drop.txt")


def test_hosts_are_merged_with_neighbours_and_with_the_networks_holding_them() -> None:
    content = parse_list(b"10.0.0.1\n10.0.0.2\n10.0.0.2\n10.0.0.3\n10.0.1.7\n10.0.1.0/24\n10.0.2.0\n10.9.9.9\n", MAX_REPORTED)
    assert texts(content.v4) == ["10.0.0.1/32", "10.0.0.2/31", "10.0.1.0/24", "10.0.2.0/32", "10.9.9.9/32"]
    assert content.v4 == ((0x0A000001, 0x0A000003), (0x0A000100, 0x0A000200), (0x0A090909, 0x0A090909))


def test_errors_name_the_list_and_its_line_all_at_once(tmp_path: Path) -> None:
    listed = "192.0.2.1\nmail.example.com\n.example.com\n10.0.0.300\ndnslist[bl.test]\nscore[-10:-3]\ncountry[CN]\nfile:other.txt\nALL\n10.0.0.1/33\n"
    path = write_policy(tmp_path, {"lists/drop.txt": listed})
    shown = tmp_path / "lists" / "drop.txt"
    assert problems(path) == [
        f"{shown}:2: 'mail.example.com' is a host name: a list file holds addresses, ranges and networks only",
        f"{shown}:3: '.example.com' is a host name: a list file holds addresses, ranges and networks only",
        f"{shown}:4: '10.0.0.300' is not an IPv4 address",
        f"{shown}:5: 'dnslist[bl.test]' is a DNS list: a list file holds addresses, ranges and networks only",
        f"{shown}:6: 'score[-10:-3]' is a score: a list file holds addresses, ranges and networks only",
        f"{shown}:7: 'country[CN]' is a country entry: a list file holds addresses, ranges and networks only",
        f"{shown}:8: 'file:other.txt' is another list: a list file holds addresses, ranges and networks only",
        f"{shown}:9: 'ALL' is ALL: a list file holds addresses, ranges and networks only",
        f"{shown}:10: '10.0.0.1/33': prefix length must be 0..32",
    ]


def test_the_list_is_shown_as_the_policy_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_policy(tmp_path, {"lists/drop.txt": "192.0.2.1\nnot-an-address!\n"})
    monkeypatch.chdir(tmp_path)
    assert problems(Path("policy.yml")) == [
        "lists/drop.txt:2: 'not-an-address!' is not an address, range, CIDR, host name, dnslist[zone], score[a:b], country[..] or file:",
    ]


def test_a_list_with_many_errors_lists_the_first_then_counts(tmp_path: Path) -> None:
    listed = "".join(f"10.0.0.{300 + i}\n" for i in range(MAX_REPORTED + 50))
    got = problems(write_policy(tmp_path, {"lists/drop.txt": listed}))
    assert len(got) == MAX_REPORTED + 1
    assert got[0].endswith("lists/drop.txt:1: '10.0.0.300' is not an IPv4 address")
    assert got[-1].endswith(": 50 more problems not listed")


def test_a_missing_list_is_an_error_at_the_entry_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {}, entries='192.0.2.7, "file:lists/missing.txt"')
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "missing.txt" in text)
    assert problems(path) == [
        f"{path}:{line}: sender_groups.BL.1: cannot read {tmp_path / 'lists' / 'missing.txt'}: No such file or directory",
    ]


def test_a_list_that_is_not_text_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "drop.txt").write_bytes(b"192.0.2.1\n192.0.2.2\n\xff\xfe\n")
    assert problems(path) == [f"{tmp_path / 'lists' / 'drop.txt'}:3: not UTF-8 text (byte 0xff)"]


def test_generation_follows_the_list_content(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {"lists/drop.txt": "192.0.2.1\n"})
    first = load_policy(path).generation()
    assert load_policy(path).generation() == first
    (tmp_path / "lists" / "drop.txt").write_text("192.0.2.1\n192.0.2.99\n")
    changed = load_policy(path)
    assert changed.generation() != first
    assert texts(the_set(changed).v4) == ["192.0.2.1/32", "192.0.2.99/32"]


def test_an_unchanged_list_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "drop.txt"
    path.write_text("192.0.2.1\n")
    first = read_list(str(path), MAX_REPORTED)
    assert read_list(str(path), MAX_REPORTED) is first
    # written in place (new mtime), then renamed over (new inode): read again each time
    stamp = os.stat(path).st_mtime_ns
    path.write_text("192.0.2.2\n")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    second = read_list(str(path), MAX_REPORTED)
    assert second is not first and texts(second.v4) == ["192.0.2.2/32"]
    (tmp_path / "new.txt").write_text("192.0.2.3\n")
    os.utime(tmp_path / "new.txt", ns=(stamp + 10**9, stamp + 10**9))
    os.rename(tmp_path / "new.txt", path)
    assert texts(read_list(str(path), MAX_REPORTED).v4) == ["192.0.2.3/32"]


def test_reloading_a_policy_shares_the_unchanged_lists(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {"lists/drop.txt": "192.0.2.1\n"})
    assert the_set(load_policy(path)).v4 is the_set(load_policy(path)).v4


def test_file_entries_compile_into_the_kernel_set_with_earlier_holes(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, {"lists/drop.txt": "192.0.2.0/29\n2001:db8::/64\n"}))
    lp = compile_policy(policy).listeners[0]
    assert cidr_texts(lp.refuse4) == ["192.0.2.0/31", "192.0.2.3/32", "192.0.2.4/30"]  # WL's 192.0.2.2 carved out
    assert cidr_texts(lp.refuse6) == ["2001:db8::/64"]


def test_decisions_name_the_list(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, {"lists/drop.txt": "192.0.2.0/29\n10.9.9.9\n"}))
    hat = build_hat_indexes(policy)["In"]
    plan = compile_policy(policy).listeners[0]
    for address, group, match, refused in (
        ("10.9.9.9", "BL", "file:lists/drop.txt", True),
        ("192.0.2.5", "BL", "file:lists/drop.txt", True),
        ("192.0.2.2", "WL", "192.0.2.2", False),
        ("10.9.9.10", "ALL", "ALL", False),
    ):
        decision = hat.decide(address)
        assert (decision.sender_group, decision.match) == (group, match)
        assert plan.refuses(*address_to_int(address)) is refused


def test_source_files_are_the_lists_read(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {"lists/drop.txt": "192.0.2.1\n", "other.txt": "10.0.0.1\n"},
                        entries='"file:lists/drop.txt", "file:other.txt", "file:lists/../lists/drop.txt"')
    assert source_files(load_policy(path)) == (str(tmp_path / "lists" / "drop.txt"), str(tmp_path / "other.txt"))


def test_a_small_change_is_applied_to_the_last_content_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines added and removed (hosts, networks overlapping hosts and each other, ranges, IPv6,
    repeated lines, comments) give what a parse of the whole file gives, without one."""
    rng = random.Random(5)

    def line() -> str:
        kind = rng.randrange(8)
        if kind < 4:
            return f"10.0.{rng.randrange(4)}.{rng.randrange(256)}"
        if kind == 4:
            length = rng.choice((24, 28, 30, 31))
            return f"10.0.{rng.randrange(4)}.{rng.randrange(256) >> (32 - length) << (32 - length)}/{length}"
        if kind == 5:
            low = rng.randrange(250)
            return f"10.0.{rng.randrange(4)}.{low}-{low + rng.randrange(6)}"
        if kind == 6:
            return f"2001:db8::{rng.randrange(64):x}"
        return rng.choice(["# comment", "", f"10.0.1.{rng.randrange(256)} ; why"])

    full_parses = 0
    pack = lists._pack_hosts

    def counted(lines: list[str]) -> tuple[list[bytes], list[int]]:
        nonlocal full_parses
        full_parses += 1
        return pack(lines)

    monkeypatch.setattr(lists, "_pack_hosts", counted)
    path = tmp_path / "drop.txt"
    for round_ in range(25):
        current = [line() for _ in range(300)]
        end = "\n" if round_ % 2 else ""  # with and without a last newline
        path.write_text("\n".join(current) + end)
        read_list(str(path), MAX_REPORTED)
        for _ in range(5):
            for _ in range(rng.randrange(1, 6)):
                if rng.random() < 0.5 and current:
                    removed = current.pop(rng.randrange(len(current)))
                    current = [c for c in current if c != removed] if rng.random() < 0.5 else current
                else:
                    current.insert(rng.randrange(len(current) + 1), line())
            (tmp_path / "new.txt").write_text("\n".join(current) + end)
            os.rename(tmp_path / "new.txt", path)
            before = full_parses
            got = read_list(str(path), MAX_REPORTED)
            assert full_parses == before, round_  # applied, not parsed
            want = parse_list(path.read_bytes(), MAX_REPORTED)
            assert (got.v4, got.v6, got.digest) == (want.v4, want.v6, want.digest), (round_, current)


def test_a_wrong_line_added_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write_policy(tmp_path, {"lists/drop.txt": "192.0.2.1\n192.0.2.2\n"})
    load_policy(path)
    (tmp_path / "lists" / "drop.txt").write_text("192.0.2.1\nmx.example.test\n192.0.2.2\n")
    assert problems(path) == [f"{tmp_path / 'lists' / 'drop.txt'}:2: 'mx.example.test' is a host name: a list file holds addresses, ranges and networks only"]
