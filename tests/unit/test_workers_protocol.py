"""serve --workers' control channel: lines, and the listener counters workers report and the
supervisor sums (netpolicy.daemon.workers)."""

from __future__ import annotations

from collections import Counter

from netpolicy.daemon.workers import Totals, add_counts, add_stats, decode, encode, stats_json
from netpolicy.smtp.services import ListenerStats


def test_a_message_is_one_line_and_reads_back() -> None:
    line = encode({"op": "installed", "ok": True, "generation": "abc"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == {"op": "installed", "ok": True, "generation": "abc"}


def test_lines_that_are_not_messages_are_none() -> None:
    for line in (b"", b"not json\n", b"[1, 2]\n", b'{"generation": "abc"}\n', b'{"op": 3}\n', b"\xff\n"):
        assert decode(line) is None, line


def _stats(accepted: int, groups: dict[tuple[str, str], int], refused: dict[str, int], open_now: int) -> ListenerStats:
    stats = ListenerStats(messages_accepted=accepted, open_connections=open_now)
    stats.connections.update(groups)
    stats.recipients_refused.update(refused)
    return stats


def test_two_workers_reports_sum_with_their_keys() -> None:
    one = _stats(3, {("ALL", "accept"): 5, ("BLACKLIST", "tcprefuse"): 1}, {"max_rcpts_per_hour": 2}, 1)
    two = _stats(4, {("ALL", "accept"): 7}, {"max_rcpts_per_hour": 1, "rat": 3}, 2)
    total = ListenerStats()
    for stats in (one, two):
        add_stats(total, decode(encode({"op": "stats", "s": stats_json(stats)}))["s"])  # type: ignore[index]
    assert total.messages_accepted == 7 and total.open_connections == 3
    assert total.connections == Counter({("ALL", "accept"): 12, ("BLACKLIST", "tcprefuse"): 1})
    assert total.recipients_refused == Counter({"max_rcpts_per_hour": 3, "rat": 3})


def test_what_does_not_parse_is_left_out() -> None:
    total = ListenerStats()
    add_stats(total, {"messages_accepted": "7", "pregreet": True, "open_connections": 2,
                      "connections": [["ALL", "accept", 2], ["ALL", 3], "x", ["ALL", "accept", "2"], [1, 2]],
                      "recipients_refused": {"rat": 1}})
    assert total.messages_accepted == 0 and total.pregreet == 0 and total.open_connections == 2
    assert total.connections == Counter({("ALL", "accept"): 2})
    assert total.recipients_refused == Counter()
    counts: Counter[str] = Counter()
    add_counts(counts, {"IncomingMail": 2, "x": "3", "y": None})
    add_counts(counts, ["IncomingMail"])
    assert counts == Counter({"IncomingMail": 2})


def test_totals_of_a_worker_that_ended_keep_its_counts_but_not_its_open_connections() -> None:
    report = {"listeners": {"IncomingMail": stats_json(_stats(3, {("ALL", "accept"): 5}, {}, 2))},
              "promotions": {"IncomingMail": 1}, "learned": {}, "learn_skipped": {}}
    ended = Totals()
    ended.add(report, open_now=False)
    totals = Totals()
    totals.add(ended.report())
    totals.add(report)
    stats = totals.listeners["IncomingMail"]
    assert (stats.messages_accepted, stats.open_connections, totals.connections()) == (6, 2, 10)
    assert totals.promotions == Counter({"IncomingMail": 2})
