"""DNS-list answer patterns: which A answers are listings (SPEC.md section 7).

Spamhaus answers 127.255.255.252/254/255 for errors (public resolver, typo, excessive queries):
only 127.0.0.0/8 outside 127.255.255.0/24, or what the entry's Postfix-style pattern names, lists.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netpolicy.model import PolicyError, parse_policy
from netpolicy.model.entries import LISTING, DnsListEntry, EntryError, parse_answer_pattern, parse_entry
from netpolicy.model.hat import Fact, HatIndex, build_hat_indexes
from tests.support.policies import make_policy

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yml"

quads = st.tuples(*[st.integers(0, 255)] * 4).map(lambda q: ".".join(map(str, q)))


@given(quads)
def test_default_pattern_is_loopback_outside_the_error_block(answer: str) -> None:
    address = ipaddress.IPv4Address(answer)
    expected = address in ipaddress.IPv4Network("127.0.0.0/8") and address not in ipaddress.IPv4Network("127.255.255.0/24")
    assert LISTING.matches(answer) is expected


@given(quads, st.integers(0, 255), st.integers(0, 255), st.lists(st.integers(0, 255), min_size=1, max_size=4))
def test_pattern_octets_are_numbers_ranges_and_lists(answer: str, lo: int, hi: int, choices: list[int]) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    text = f"127.[{lo}..{hi}].[{';'.join(map(str, choices))}].4"
    octets = [int(o) for o in answer.split(".")]
    expected = octets[0] == 127 and lo <= octets[1] <= hi and octets[2] in choices and octets[3] == 4
    assert parse_answer_pattern(text).matches(answer) is expected


def test_entry_forms_and_answers() -> None:
    plain = parse_entry("dnslist[zen.spamhaus.org]")
    assert plain == DnsListEntry("dnslist[zen.spamhaus.org]", "zen.spamhaus.org", LISTING)
    assert plain.pattern.matches("127.0.0.10") and not plain.pattern.matches("127.255.255.254")
    ranged = parse_entry("dnslist[Zen.Spamhaus.org.=127.0.0.[2..11]]")
    assert isinstance(ranged, DnsListEntry) and ranged.zone == "zen.spamhaus.org"
    assert [ranged.pattern.matches(a) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.11", "127.0.0.12", "127.255.255.254")] == [
        False, True, True, False, False]
    assert not ranged.pattern.matches("127.0.0") and not ranged.pattern.matches("::1")


@pytest.mark.parametrize(("text", "message"), [
    ("dnslist[bl.test=127.0.0]", "does not have four octets"),
    ("dnslist[bl.test=127.0.0.2.3]", "does not have four octets"),
    ("dnslist[bl.test=]", "does not have four octets"),
    ("dnslist[bl.test=127.0.0.[5..2]]", "runs backwards"),
    ("dnslist[bl.test=127.0.0.256]", "above 255"),
    ("dnslist[bl.test=127.0.0.[1..300]]", "above 255"),
    ("dnslist[bl.test=127.0.0.[1;]]", "not a number"),
    ("dnslist[bl.test=127.0.0.x]", "not a number"),
])
def test_bad_patterns_are_entry_errors(text: str, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        parse_entry(text)


def test_bad_pattern_is_reported_at_its_line() -> None:
    old = '"dnslist[bl.example.test]"'
    assert old in EXAMPLE.read_text()
    text = EXAMPLE.read_text().replace(old, '"dnslist[bl.example.test=127.0.0.[9..1]]"', 1)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "[9..1]" in row)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yml")
    assert any(str(p).startswith(f"p.yml:{line}:") and "runs backwards" in str(p) for p in info.value.problems)


class AnswersOf:
    """A resolver whose lists answer fixed records; it judges them as DnsResolver does."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def verified_hostname(self, address: str) -> Fact[str | None]:
        return Fact(None, 300.0)

    async def dnslisted(self, address: str, zone: str, pattern: object) -> Fact[bool]:
        assert hasattr(pattern, "matches")
        return Fact(any(pattern.matches(a) for a in self.answers.get(zone, [])), 300.0)


def test_hat_lists_only_answers_the_entry_pattern_matches() -> None:
    p = make_policy([("ZEN", "tcprefuse"), ("ANY", "reject")],
                    {"ZEN": ["dnslist[zen.test=127.0.0.[2..3]]"], "ANY": ["dnslist[zen.test]"]})
    h: HatIndex = build_hat_indexes(p)["L"]
    for answers, group in ((["127.0.0.2"], "ZEN"), (["127.0.0.10"], "ANY"), (["127.255.255.254"], "ALL"), ([], "ALL")):
        assert asyncio.run(h.decide_async("10.1.1.1", AnswersOf({"zen.test": answers}))).sender_group == group, answers
        listed = lambda zone, pattern, answers=answers: any(pattern.matches(a) for a in answers)  # noqa: E731
        assert h.decide("10.1.1.1", dnslisted=listed).sender_group == group, answers
