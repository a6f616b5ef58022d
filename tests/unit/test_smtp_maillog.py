"""The mail log's lines are the appliance's (SPEC.md section 5), word for word."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path

from netpolicy.model.effective import effective_policy
from netpolicy.model.hat import Decision
from netpolicy.model.policy import Behavior, MailFlowPolicy, PolicyParams
from netpolicy.smtp.maillog import MailLog


def decision(group: str, match: str, behavior: Behavior) -> Decision:
    policy = effective_policy("P", MailFlowPolicy(behavior=behavior), PolicyParams())
    return Decision("IncomingMail", "127.0.0.99", group, match, policy)


def test_spec_example_reproduced() -> None:
    out = io.StringIO()
    log = MailLog(stream=out, first_id=5)
    icid = log.next_id()
    log.new_connection(icid, "IncomingMail", "127.0.0.1", "127.0.0.99", None)
    log.decision(icid, decision("ALL", "ALL", "accept"))
    mid = log.next_id()
    log.start_message(mid, icid)
    log.mail_from(mid, icid, "a@x.test")
    log.recipient(mid, icid, 0, "b@example.test")
    log.ready(mid, 1234, "a@x.test")
    log.close_connection(icid)
    log.decision(log.next_id(), decision("REJECTLIST", "127.0.0.77", "reject"))
    log.kernel_refusal("BLACKLIST", "127.0.0.66")
    assert out.getvalue().splitlines() == [
        "New SMTP ICID 5 interface IncomingMail (127.0.0.1) address 127.0.0.99 reverse dns host unknown verified no",
        "ICID 5 ACCEPT SG ALL match ALL",
        "Start MID 6 ICID 5",
        "MID 6 ICID 5 From: <a@x.test>",
        "MID 6 ICID 5 RID 0 To: <b@example.test>",
        "MID 6 ready 1234 bytes from <a@x.test>",
        "ICID 5 close",
        "ICID 7 REJECT SG REJECTLIST match 127.0.0.77",
        "ICID 0 TCPREFUSE SG BLACKLIST match 127.0.0.66",
    ]


def test_verified_name_and_delayed_reject() -> None:
    out = io.StringIO()
    log = MailLog(stream=out)
    log.new_connection(1, "In", "10.0.0.1", "192.0.2.9", "mx.sender.test")
    log.decision(1, decision("REJECTLIST", ".sender.test", "reject"), delayed=True)
    assert out.getvalue().splitlines() == [
        "New SMTP ICID 1 interface In (10.0.0.1) address 192.0.2.9 reverse dns host mx.sender.test verified yes",
        "ICID 1 Delayed REJECT SG REJECTLIST match .sender.test",
    ]


def test_scored_decision_ends_with_the_score_as_the_appliance_writes_it() -> None:
    out = io.StringIO()
    log = MailLog(stream=out)
    blocked = decision("BLACKLIST", "score[-10:-3]", "tcprefuse")
    log.decision(1, replace(blocked, score=-9.0, scored=True))
    log.decision(2, replace(decision("SUSPECT", "score[-3:-1]", "accept"), score=-2.5, scored=True))
    log.decision(3, replace(decision("UNKNOWN", "score[none]", "reject"), scored=True))
    log.decision(4, replace(decision("ALL", "ALL", "accept"), score=4.0, scored=True))
    log.decision(5, replace(decision("ALL", "ALL", "accept"), score=0.0, scored=True))
    log.decision(6, decision("ALL", "ALL", "accept"))  # no reputation block: no SBRS field
    assert out.getvalue().splitlines() == [
        "ICID 1 TCPREFUSE SG BLACKLIST match score[-10:-3] SBRS -9.0",
        "ICID 2 ACCEPT SG SUSPECT match score[-3:-1] SBRS -2.5",
        "ICID 3 REJECT SG UNKNOWN match score[none] SBRS none",
        "ICID 4 ACCEPT SG ALL match ALL SBRS 4.0",
        "ICID 5 ACCEPT SG ALL match ALL SBRS 0.0",
        "ICID 6 ACCEPT SG ALL match ALL",
    ]


def test_the_country_follows_the_score_as_in_the_spec() -> None:
    out = io.StringIO()
    log = MailLog(stream=out, first_id=5)
    blocked = replace(decision("BLACKLIST", "score[-10:-3]", "tcprefuse"), score=-9.0, scored=True, country="CN")
    log.decision(log.next_id(), blocked)
    log.decision(log.next_id(), replace(decision("ALL", "ALL", "accept"), country="NL"))  # geoip, no reputation
    log.decision(log.next_id(), replace(decision("ALL", "ALL", "accept"), scored=True))  # in no country
    assert out.getvalue().splitlines() == [
        "ICID 5 TCPREFUSE SG BLACKLIST match score[-10:-3] SBRS -9.0 country CN",
        "ICID 6 ACCEPT SG ALL match ALL country NL",
        "ICID 7 ACCEPT SG ALL match ALL SBRS none",
    ]


def test_file_lines_carry_time_and_level(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    log = MailLog(str(path), clock=lambda: 1795428000.25)  # 2026-11-23T10:00:00Z
    log.close_connection(5)
    log.delivery_failed(6, "451 4.4.1 next hop down")
    assert path.read_text().splitlines() == [
        "2026-11-23T10:00:00Z Info: ICID 5 close",
        "2026-11-23T10:00:00Z Warning: MID 6 not accepted: 451 4.4.1 next hop down",
    ]
    path.rename(tmp_path / "mail.log.1")  # rotation, then SIGHUP
    log.reopen()
    log.close_connection(7)
    log.close()
    assert path.read_text() == "2026-11-23T10:00:00Z Info: ICID 7 close\n"


def test_ids_interleave_across_workers() -> None:
    a, b = MailLog(stream=io.StringIO(), first_id=1, id_step=2), MailLog(stream=io.StringIO(), first_id=2, id_step=2)
    ids = [a.next_id(), b.next_id(), a.next_id(), b.next_id()]
    assert ids == [1, 2, 3, 4]


async def test_lines_from_the_event_loop_are_written_together() -> None:
    out = io.StringIO()
    log = MailLog(stream=out)
    log.close_connection(1)
    log.close_connection(2)
    assert out.getvalue() == ""  # pending until the loop turns
    await asyncio.sleep(0)
    assert out.getvalue() == "ICID 1 close\nICID 2 close\n"
