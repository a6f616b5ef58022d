"""Hostile and malformed policy files: ``netpolicy validate`` refuses each one with exit 1 and
``file:line: message`` lines only, in bounded time and memory.

Small cases run in-process through the real command line; the cases that can run to gigabytes
run in a child process under ``RLIMIT_AS``, so a regression fails the test instead of eating the
machine. A hypothesis test mutates the bytes of a valid policy and asserts the same contract.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpolicy.cli import cli
from netpolicy.model import loader, yamltree

EXAMPLE = (Path(__file__).parents[2] / "examples" / "policy.yml").read_bytes()
TIME_BOUND = 3.0  # seconds per in-process case; they take milliseconds
CHILD_MEMORY = 1536 * 2**20  # address space of a child validate: start-up alone maps ~400 MiB
CHILD_TIME = 30.0


def alias_bomb(levels: int, width: int = 9) -> bytes:
    """``width ** levels`` strings from a few hundred bytes (levels=7: 396 bytes, 4.8M strings)."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


def example_with(old: str, new: str) -> bytes:
    assert old.encode() in EXAMPLE
    return EXAMPLE.replace(old.encode(), new.encode(), 1)


def line_of(data: bytes, needle: str) -> int:
    return data[: data.index(needle.encode())].count(b"\n") + 1


# name -> (file content, the line the first problem names, a phrase of its message)
CORPUS: dict[str, tuple[bytes, int, str]] = {
    "alias bomb": (alias_bomb(5), 1, "anchors (&name) and aliases (*name) are not supported"),
    "recursive alias": (b"version: 1\nlisteners: &l [*l]\n", 2, "anchors (&name) and aliases"),
    "alias to no anchor": (b"version: *nope\n", 1, "anchors (&name) and aliases"),
    "merge key": (example_with("  ACCEPTED:  {behavior: accept}", "  ACCEPTED:\n    <<: {behavior: accept}"),
                  line_of(EXAMPLE, "ACCEPTED:  {") + 1, "merge keys (<<) are not supported"),
    "python object tag": (example_with("port: 2525", "port: !!python/object/apply:os.system [true]"),
                          line_of(EXAMPLE, "port: 2525"), "unsupported tag !!python/object/apply:os.system"),
    "python name tag on a mapping": (b"version: !!python/name:os.system {}\n", 1, "unsupported tag"),
    "binary tag": (example_with("hostname: mx.example.test", "hostname: !!binary bXg="),
                   line_of(EXAMPLE, "hostname:"), "unsupported tag !!binary"),
    "local tag": (example_with("port: 2525", "port: !mine 2525"), line_of(EXAMPLE, "port: 2525"), "unsupported tag !mine"),
    "bad timestamp": (example_with("port: 2525", "port: 2024-13-45"), line_of(EXAMPLE, "port: 2525"), "valid integer"),
    "explicit bad timestamp": (b"version: !!timestamp 2024-13-45\n", 1, "unsupported tag !!timestamp"),
    "bad boolean": (example_with("kernel: true", "kernel: !!bool maybe"), line_of(EXAMPLE, "kernel: true"),
                    "cannot read 'maybe' as !!bool"),
    "int of 5,000 digits": (example_with("port: 2525", "port: " + "9" * 5000), line_of(EXAMPLE, "port: 2525"),
                            "cannot read '9999"),
    "not UTF-8": (example_with("mx.example.test", "mx.ex\xe9mple.test").replace("é".encode(), b"\xe9"),
                  line_of(EXAMPLE, "mx.example.test"), "not UTF-8 text (byte 0xe9)"),
    "UTF-16": ("version: 1\n".encode("utf-16"), 1, "not UTF-8 text"),
    "NUL byte": (example_with("mx.example.test", "mx.ex\0ample.test"), line_of(EXAMPLE, "mx.example.test"),
                 "character U+0000 is not allowed"),
    "escaped NUL": (example_with("maildir: var/maildir", 'maildir: "var/\\0maildir"'), line_of(EXAMPLE, "maildir: var"),
                    "delivery.maildir"),
    "BOM inside a value": (example_with("mx.example.test", "mx.\ufeffexample.test"), line_of(EXAMPLE, "mx.example.test"),
                           "is not a host name"),
    "tab indentation": (example_with("    port: 2525", "\tport: 2525"), line_of(EXAMPLE, "port: 2525"), "YAML:"),
    "deep flow nesting": (b"version: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", 1, "nest"),
    "deep mapping nesting": (b"version: " + b"{a: " * 50 + b"1" + b"}" * 50 + b"\n", 1, "nested deeper than 32 levels"),
    "two documents": (EXAMPLE + b"---\nversion: 1\n", EXAMPLE.count(b"\n") + 1, "one YAML document"),
    "collection as key": (b"[a]: 1\n", 1, "mapping keys must be plain scalars"),
    "empty file": (b"", 1, "the policy file is empty"),
    "only a comment": (b"# nothing\n", 1, "the policy file is empty"),
    "a scalar": (b"hello\n", 1, "the policy must be a mapping"),
    "unclosed flow": (b"version: 1\nlisteners: [\n  {name: a\n", 4, "YAML:"),
    "huge scalar": (b'version: "' + b"a" * 5_000_000 + b'"\n', 1, "must be the number 1"),
}


def validate(path: Path) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(cli, ["validate", "-p", str(path)])
    return result.exit_code, result.stdout, result.stderr, result.exception


def assert_refused_cleanly(path: Path, err: str) -> list[str]:
    lines = err.splitlines()
    assert lines, "no message"
    pattern = re.compile(rf"^{re.escape(str(path))}:\d+: \S")
    assert all(pattern.match(line) for line in lines), lines[:5]
    assert "Traceback" not in err
    return lines


@pytest.mark.parametrize("name", CORPUS)
def test_malformed_file_is_refused_with_file_line(name: str, tmp_path: Path) -> None:
    data, line, phrase = CORPUS[name]
    path = tmp_path / "policy.yml"
    path.write_bytes(data)
    started = time.monotonic()
    code, out, err, exc = validate(path)
    took = time.monotonic() - started
    assert isinstance(exc, SystemExit), exc
    assert code == 1, (out, err)
    lines = assert_refused_cleanly(path, err)
    assert lines[0].startswith(f"{path}:{line}: ") and phrase in lines[0], lines[:3]
    assert took < TIME_BOUND, f"{took:.2f} s"


def test_bom_at_the_start_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE)
    code, out, err, _ = validate(path)
    assert code == 0 and "ok" in out, err


def test_node_and_structure_caps_name_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caps themselves, made small; the real ones are exercised in a child process below."""
    monkeypatch.setattr(yamltree, "MAX_NODES", 200)
    path = tmp_path / "policy.yml"
    path.write_bytes(EXAMPLE.replace(b"RELAYLIST: []", b"RELAYLIST: [" + b"10.0.0.1, " * 300 + b"]"))
    code, _, err, _ = validate(path)
    assert code == 1 and assert_refused_cleanly(path, err) == [f"{path}:{line_of(EXAMPLE, 'RELAYLIST: []')}: more than 200 values: too large for one policy"]
    monkeypatch.setattr(yamltree, "MAX_NODES", 10**6)
    monkeypatch.setattr(yamltree, "MAX_STRUCTURE", 200)
    path.write_bytes(EXAMPLE + b"".join(b"k%d: 1\n" % i for i in range(300)))
    code, _, err, _ = validate(path)
    assert code == 1 and "more than 200 values outside sender-group entries" in err


def test_many_bad_entries_are_listed_up_to_the_cap_then_counted(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_bytes(EXAMPLE.replace(b"RELAYLIST: []", b"RELAYLIST: [" + b"10.0.0.300, " * 500 + b"]"))
    code, _, err, _ = validate(path)
    lines = assert_refused_cleanly(path, err)
    assert code == 1 and len(lines) == loader.MAX_REPORTED + 1
    assert lines[-1].endswith(": 400 more problems not listed")


def test_bad_entry_does_not_shift_the_line_of_a_later_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    text = EXAMPLE.replace(b"RELAYLIST: []", b"RELAYLIST:\n    - 10.0.0.300\n    - 10.0.0.1\n    - ALL")
    path.write_bytes(text)
    code, _, err, _ = validate(path)
    assert code == 1
    assert f"{path}:{line_of(text, '10.0.0.300')}: sender_groups.RELAYLIST.0:" in err
    assert f"{path}:{line_of(text, '- ALL')}: ALL is only valid as the HAT group ALL" in err


# -- the worst cases, each in a child process with bounded address space and time ------------

def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _big_group(n: int, entry: bytes) -> bytes:
    return EXAMPLE.replace(b"  RELAYLIST: []\n", b"  RELAYLIST:\n" + (b"    - " + entry + b"\n") * n)


# name -> (a function writing the file's content, a phrase of the refusal); built when run
WORST: dict[str, tuple[Callable[[], bytes], str]] = {
    "alias bomb of 9**8 strings (450 bytes)": (lambda: alias_bomb(8), "anchors (&name) and aliases"),
    "a 50 MB file": (lambda: EXAMPLE + b"# " + b"x" * 50_000_000 + b"\n", "policy larger than 40 MiB"),
    "2.1M values": (lambda: _big_group(2_100_000, b"10.0.0.1"), "more than 2,000,000 values"),
    "300k keys outside sender groups": (lambda: EXAMPLE + b"".join(b"k%d: 1\n" % i for i in range(300_000)),
                                        "values outside sender-group entries"),
    "1.9M bad entries": (lambda: _big_group(1_900_000, b"1.2.3.999"), "more problems not listed"),
    "a 39 MiB scalar": (lambda: EXAMPLE.replace(b"mx.example.test", b"x" * (39 * 2**20)), "is not a host name"),
}


@pytest.mark.parametrize("name", WORST)
def test_worst_cases_stay_bounded_in_a_child(name: str, tmp_path: Path) -> None:
    content, phrase = WORST[name]
    path = tmp_path / "policy.yml"
    path.write_bytes(content())
    proc = subprocess.run([sys.executable, "-m", "netpolicy", "validate", "-p", str(path)], capture_output=True, text=True,
                          preexec_fn=_limit_memory, timeout=CHILD_TIME)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert_refused_cleanly(path, proc.stderr)
    assert phrase in proc.stderr


# -- fuzz: a valid policy with some bytes replaced, inserted or deleted -----------------------

SPECIAL = b"\x00\x01\x07\t\n\r\x1b &*!<>{}[]|:-?#%@`'\"\\,~=\x7f\x85\xa0\xc3\xe9\xef\xbb\xbf\xfe\xff"
byte = st.one_of(st.sampled_from(list(SPECIAL)), st.integers(0, 255))
edit = st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(0, len(EXAMPLE) - 1), st.lists(byte, min_size=1, max_size=4))


def mutate(data: bytes, edits: list[tuple[str, int, list[int]]]) -> bytes:
    out = bytearray(data)
    for kind, pos, new in edits:
        pos = min(pos, len(out))
        if kind == "replace":
            out[pos:pos + len(new)] = bytes(new)
        elif kind == "insert":
            out[pos:pos] = bytes(new)
        else:
            del out[pos:pos + len(new)]
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit, min_size=1, max_size=6))
def test_fuzzed_policy_is_valid_or_refused_cleanly(edits: list[tuple[str, int, list[int]]], tmp_path: Path) -> None:
    path = tmp_path / "fuzzed.yml"
    path.write_bytes(mutate(EXAMPLE, edits))
    started = time.monotonic()
    code, out, err, exc = validate(path)
    assert time.monotonic() - started < TIME_BOUND
    if code == 0:
        assert exc is None and "ok" in out
        return
    assert code == 1 and isinstance(exc, SystemExit), (exc, err)
    assert_refused_cleanly(path, err)
