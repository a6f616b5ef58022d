"""import-hat: an appliance HAT export becomes a policy that validates and decides like the export."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from netpolicy.cli import cli
from netpolicy.model import Policy, parse_policy
from netpolicy.model.hat import HatIndex, build_hat_indexes
from netpolicy.model.hat_import import HatImportError, import_hat
from tests.support.geoip import country_database

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "hat_export.txt"


def sample_text() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def imported(text: str, **kwargs: object) -> Policy:
    return parse_policy(import_hat(text, **kwargs))  # type: ignore[arg-type]


def hat_of(policy: Policy, listener: str = "IncomingMail") -> HatIndex:
    return build_hat_indexes(policy)[listener]


def export_line(text: str, needle: str) -> int:
    """1-based line of the first export line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def error_of(text: str, **kwargs: object) -> HatImportError:
    with pytest.raises(HatImportError) as info:
        import_hat(text, source="hat.txt", **kwargs)  # type: ignore[arg-type]
    return info.value


# ---- the sample export -----------------------------------------------------------------------


def test_sample_keeps_the_hat_order_of_the_export() -> None:
    policy = imported(sample_text())
    listener = policy.listener("IncomingMail")
    assert [(row.group, row.policy) for row in listener.hat] == [
        ("RELAYLIST", "RELAYED"),
        ("WATCHLIST", "MONITORED"),
        ("WHITELIST", "TRUSTED"),
        ("BLACKLIST", "BLOCKED"),
        ("REJECTLIST", "REJECTED"),
        ("SUSPECTLIST", "THROTTLED"),
        ("INLINE_SPAMDOMAIN_COM", "INLINE_SPAMDOMAIN_COM"),
        ("INLINE_203_0_113", "INLINE_203_0_113"),
        ("UNKNOWNLIST", "ACCEPTED"),
        ("ALL", "ACCEPTED"),
    ]
    # Entries are copied as text, in the export's order; SenderBase ranges become score ranges.
    assert [e.text for e in policy.sender_groups["WHITELIST"]] == [
        "203.0.113.25",
        "2001:db8:1::25",
        "198.51.100.10-20",
        "mail.partner.example",
        ".trusted-partner.example",
        "score[8.0:10.0]",
    ]
    assert [e.text for e in policy.sender_groups["BLACKLIST"]] == ["score[-10.0:-3.0]", "192.0.2.0/24", "2001:db8:bad::/48"]
    assert [e.text for e in policy.sender_groups["SUSPECTLIST"]] == ["score[-3.0:-1.0]", "dnslist[bl.example.net]", "198.51.100."]
    assert [e.text for e in policy.sender_groups["UNKNOWNLIST"]] == ["score[-1.0:8.0]", "score[none]"]


ZEN, SPAMCOP, DNSWL = "zen.spamhaus.org", "bl.spamcop.net", "list.dnswl.org"


@pytest.mark.parametrize(
    ("address", "hostname", "listed", "group", "match", "behavior"),
    [
        ("10.20.7.9", None, (), "RELAYLIST", "10.20.0.0/16", "relay"),  # CIDR
        ("10.20.7.9", None, (ZEN,), "RELAYLIST", "10.20.0.0/16", "relay"),  # an address row above any score
        ("192.168.10.44", None, (), "RELAYLIST", "192.168.10.", "relay"),  # partial address
        ("203.0.113.25", None, (), "WHITELIST", "203.0.113.25", "accept"),  # before the inline 203.0.113. row
        ("2001:db8:1::25", None, (), "WHITELIST", "2001:db8:1::25", "accept"),
        ("198.51.100.15", None, (), "WHITELIST", "198.51.100.10-20", "accept"),  # last-octet range
        ("198.51.100.21", None, (), "SUSPECTLIST", "198.51.100.", "accept"),  # just past the range
        ("8.8.4.4", "mail.partner.example", (), "WHITELIST", "mail.partner.example", "accept"),
        ("8.8.4.4", "mx2.trusted-partner.example", (), "WHITELIST", ".trusted-partner.example", "accept"),
        ("192.0.2.10", None, (), "BLACKLIST", "192.0.2.0/24", "reject"),  # WATCHLIST CONTINUEs past it
        ("2001:db8:bad::1", None, (), "BLACKLIST", "2001:db8:bad::/48", "reject"),
        ("172.16.6.1", None, (), "REJECTLIST", "172.16.5.1-172.16.6.255", "reject"),  # full range
        ("8.8.4.4", "out.bulk-sender.example", (), "REJECTLIST", ".bulk-sender.example", "reject"),
        ("8.8.4.4", None, ("bl.example.net",), "SUSPECTLIST", "dnslist[bl.example.net]", "accept"),
        ("8.8.4.4", "a.b.spamdomain.com", (), "INLINE_SPAMDOMAIN_COM", ".spamdomain.com", "reject"),
        ("203.0.113.99", None, (), "INLINE_203_0_113", "203.0.113.", "tcprefuse"),
        # Scores from the imported reputation block: zen -6, spamcop -3, dnswl +4; 0 when unlisted.
        ("8.8.4.4", "mail.elsewhere.example", (), "UNKNOWNLIST", "score[-1.0:8.0]", "accept"),
        ("8.8.4.4", None, (ZEN,), "BLACKLIST", "score[-10.0:-3.0]", "reject"),
        ("8.8.4.4", None, (SPAMCOP,), "BLACKLIST", "score[-10.0:-3.0]", "reject"),  # -3: both ends included
        ("8.8.4.4", None, (ZEN, DNSWL), "SUSPECTLIST", "score[-3.0:-1.0]", "accept"),  # -2
        ("8.8.4.4", None, (DNSWL,), "UNKNOWNLIST", "score[-1.0:8.0]", "accept"),  # 4
    ],
)
def test_sample_decides_like_the_export(
    address: str, hostname: str | None, listed: tuple[str, ...], group: str, match: str, behavior: str
) -> None:
    decision = hat_of(imported(sample_text())).decide(address, hostname=hostname, dnslisted=lambda zone, pattern: zone in listed)
    assert (decision.sender_group, decision.match, decision.behavior) == (group, match, behavior)


def test_sample_parameters_are_mapped() -> None:
    hat = hat_of(imported(sample_text()))
    trusted = hat.decide("203.0.113.25").policy
    assert (trusted.max_msgs_per_session, trusted.max_rcpts_per_msg, trusted.max_concurrency) == (5000, 5000, 600)
    assert trusted.max_message_size == 100 * 1024 * 1024
    assert (trusted.max_rcpts_per_hour, trusted.dhap_limit) == (None, None)  # "unlimited" in the export
    throttled = hat.decide("198.51.100.200").policy
    assert (throttled.max_rcpts_per_hour, throttled.rate_limit_code, throttled.dhap_limit) == (20, 452, 10)
    assert throttled.rate_limit_text == "Too many recipients from $RemoteIP this hour"
    assert throttled.max_message_size == 1024 * 1024
    # smtp_banner_code = "default" / smtp_banner_text = "Use Default": left to the defaults.
    assert (throttled.smtp_banner_code, throttled.smtp_banner_text) == (220, "$Hostname ESMTP")
    rejected = hat.decide("172.16.5.1").policy
    assert (rejected.reject_banner_code, rejected.reject_banner_text) == (554, "$Hostname: $RemoteIP is not welcome here")
    accepted = hat.decide("8.8.8.8").policy
    assert (accepted.name, accepted.max_msgs_per_session, accepted.max_message_size) == ("ACCEPTED", 1000, 10485760)


def test_sample_unknown_parameters_are_comments() -> None:
    text = sample_text()
    out = import_hat(text, source="hat_export.txt")
    comments = [line.strip() for line in out.splitlines() if line.strip().startswith("#")]
    for needle, name in [
        ('use_sb = "on"', "use_sb"),
        ('use_override_hostname = "off"', "use_override_hostname"),
        ('dkim_verification_profile = "DEFAULT"', "dkim_verification_profile"),
        ('dmarc_agg_reports = "off"', "dmarc_agg_reports"),
        ('spf_helo = "off"', "spf_helo"),
    ]:
        line = export_line(text, needle)
        assert any(needle in c and f"line {line}" in c for c in comments), name
    conformance = next(c for c in comments if "spf_conformance_level" in c)
    assert f"line {export_line(text, 'spf_conformance_level')}" in conformance and "PRA identity is not checked" in conformance
    # The message checks are parameters now, not comments.
    assert not any(key in c for c in comments for key in ("spam_check =", "virus_check =", "dkim_verification =", "spf_profile =", "dmarc_verification ="))
    # Comments only: no unknown key reaches the data.
    data = yaml.safe_load(out)
    assert set(data["mail_flow_policies"]["TRUSTED"]) == {
        "behavior", "tls", "max_msgs_per_session", "max_message_size", "max_rcpts_per_msg", "max_concurrency",
        "spam_check", "virus_check", "dkim",
    }


def test_sample_message_checks_are_mapped() -> None:
    hat = hat_of(imported(sample_text()))
    checks = ("spam_check", "virus_check", "dkim", "spf", "dmarc")
    # "on"/"off" -> true/false; a check the export does not name is unset (the defaults, then off).
    assert [getattr(hat.decide("203.0.113.25").policy, c) for c in checks] == [False, True, False, False, False]  # TRUSTED
    assert [getattr(hat.decide("198.51.100.200").policy, c) for c in checks] == [True, True, True, True, True]  # THROTTLED
    assert [getattr(hat.decide("10.20.7.9").policy, c) for c in checks] == [False, True, False, False, False]  # RELAYED
    assert not hat.decide("8.8.8.8").policy.scans  # ACCEPTED: {}
    data = yaml.safe_load(import_hat(sample_text()))
    assert data["mail_flow_policies"]["TRUSTED"]["dkim"] is False and "spf" not in data["mail_flow_policies"]["TRUSTED"]


def test_sample_gets_a_scanner_block_to_review() -> None:
    text = sample_text()
    out = import_hat(text)
    scanner = parse_policy(out).scanner
    assert scanner is not None
    assert (scanner.rspamd, scanner.timeout, scanner.on_error) == ("http://127.0.0.1:11333", 20.0, "tempfail")
    lines = out.splitlines()
    start = lines.index("scanner:")
    intro = " ".join(line for line in lines[:start] if line.startswith("# ")).split("# EDIT: the export's policies check messages")[1]
    first_check = export_line(text, 'virus_check = "on"')
    assert f"export line {first_check}" in intro and "clamd" in intro and "451" in intro
    assert lines[start + 1].endswith("# EDIT") and lines[start + 3].endswith("# EDIT")


def test_imported_checks_load_with_validate(tmp_path: Path) -> None:
    policy_file = tmp_path / "imported.yml"
    policy_file.write_text(import_hat(sample_text()))
    result = CliRunner().invoke(cli, ["validate", "-p", str(policy_file)])
    assert result.exit_code == 0, result.output
    # Without its scanner block the policy does not load: the block is what makes it valid.
    text = policy_file.read_text()
    policy_file.write_text(text[: text.index("# EDIT: the export's policies check messages")])
    result = CliRunner().invoke(cli, ["validate", "-p", str(policy_file)])
    assert result.exit_code == 1 and "needs a scanner block" in result.stderr


def test_scanner_block_only_when_a_check_is_on() -> None:
    off = '$QUIET\n    ACCEPT {\n        spam_check = "off"\n        virus_check = "Off"\n        dmarc_verification = "default"\n    }\nALL $QUIET\n'
    data = yaml.safe_load(import_hat(off))
    assert "scanner" not in data and data["mail_flow_policies"]["QUIET"] == {"behavior": "accept", "spam_check": False, "virus_check": False}
    # A check the listener defaults turn on needs the block too.
    policy = imported(off, defaults={"max_message_size": 1048576, "dkim": True})
    assert policy.scanner is not None and hat_of(policy).decide("1.2.3.4").policy.dkim is True
    assert "(the listener defaults)" in import_hat(off, defaults={"spf": True})


def test_sample_gets_a_reputation_block_to_review() -> None:
    text = sample_text()
    out = import_hat(text)
    reputation = parse_policy(out).reputation
    assert reputation is not None and reputation.timeout == 2.0
    assert [(s.dnslist, s.answers, s.weight) for s in reputation.sources] == [
        ("zen.spamhaus.org", "127.0.0.[2..11]", -6.0),
        ("bl.spamcop.net", None, -3.0),
        ("list.dnswl.org", "127.0.[0..255].[1..3]", 4.0),
    ]
    lines = out.splitlines()
    start = lines.index("reputation:")
    intro = " ".join(line for line in lines[:start] if line.startswith("# ")).split("# EDIT: the appliance scored")[1]
    assert "terms of use" in intro and "choose your own" in intro and f"export line {export_line(text, 'sbrs[')}" in intro
    assert all(line.endswith("# EDIT") for line in lines[start + 3 :])


def test_sample_score_notes_say_where_netpolicy_differs() -> None:
    text = sample_text()
    lines = import_hat(text).splitlines()

    def note_above(entry: str) -> str:
        return lines[lines.index(f"    - {entry}") - 1]

    # The imported weights add up to -9..4: nothing reaches the WHITELIST's 8..10, and it says so.
    unreachable = note_above("score[8.0:10.0]")
    assert unreachable.startswith("    # EDIT: sbrs[8.0:10.0]") and f"line {export_line(text, 'sbrs[8.0')}" in unreachable
    assert "-9.0..4.0" in unreachable
    assert "failed or timed out" in note_above("score[none]") and "SenderBase knew nothing" in note_above("score[none]")
    assert not note_above("score[-10.0:-3.0]").lstrip().startswith("#")  # reachable: no note


def test_sample_comment_of_the_unknown_parameter_sits_with_its_policy() -> None:
    out = import_hat(sample_text()).splitlines()
    start = out.index("  RELAYED:")
    end = next(i for i in range(start + 1, len(out)) if out[i].startswith("  ") and not out[i].startswith("    "))
    block = "\n".join(out[start:end])
    assert "spam_check" in block and "use_sb" in block and "behavior: relay" in block


def test_listener_defaults_and_rat_must_be_edited() -> None:
    out = import_hat(sample_text())
    policy = parse_policy(out)
    listener = policy.listener("IncomingMail")
    assert (listener.address, listener.port, listener.type, listener.delivery.maildir) == ("127.0.0.1", 2525, "public", "var/maildir")
    assert [(r.recipient, r.action) for r in listener.rat or []] == [("ALL", "reject")]
    rat_lines = out[out.index("    rat:") : out.index("{recipient: ALL, action: reject}")]
    assert "EDIT" in rat_lines and "domains" in rat_lines


# ---- forms and options -----------------------------------------------------------------------


def test_listener_fields_are_parameters() -> None:
    text = "$RELAYED\n  RELAY {}\n$BLOCKED\n  REJECT {}\nRELAYLIST:\n  10.0.0.0/8\n  $RELAYED\nALL $BLOCKED\n"
    policy = imported(
        text,
        listener_name="Outbound",
        listener_type="private",
        address="::1",
        port=10025,
        hostname="relay.example.test",
        kernel=False,
        next_hop="127.0.0.1:10026",
        defaults={"max_message_size": 2048},
    )
    listener = policy.listener("Outbound")
    assert (listener.type, listener.address, listener.port, listener.hostname, listener.kernel) == ("private", "::1", 10025, "relay.example.test", False)
    assert listener.rat is None
    assert (listener.delivery.next_hop, listener.delivery.maildir) == ("127.0.0.1:10026", None)
    assert listener.defaults.max_message_size == 2048 and listener.defaults.max_concurrency is None
    assert hat_of(policy, "Outbound").decide("10.1.2.3").behavior == "relay"
    assert hat_of(policy, "Outbound").decide("11.1.2.3").behavior == "reject"


def test_bad_listener_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not valid with these listener settings") as info:
        import_hat("ALL ACCEPT\n", address="not-an-address")
    assert not isinstance(info.value, HatImportError)


def test_two_line_all_inline_blocks_and_inline_policy_references() -> None:
    text = (
        "# exported by hand\n"
        "$ACCEPTED ACCEPT { max_message_size = 2M max_concurrency = 5 }\n"
        "$BLOCKED\n"
        "    TCPREFUSE {}\n"
        "10.1.1.7 $BLOCKED\n"
        "10.1.1.0/24 ACCEPT { max_msgs_per_session = 3 }\n"
        "PARTNERS:\n"
        "    10.2.0.1, 10.2.0.2\n"
        "    REJECT {\n"
        '        reject_banner_text = "Go away \\"$RemoteIP\\""\n'
        "    }\n"
        "ALL\n"
        "    $ACCEPTED (Everyone else)\n"
    )
    policy = imported(text)
    hat = hat_of(policy)
    assert [row.group for row in policy.listener("IncomingMail").hat] == ["INLINE_10_1_1_7", "INLINE_10_1_1_0_24", "PARTNERS", "ALL"]
    assert hat.decide("10.1.1.7").behavior == "tcprefuse"
    inline = hat.decide("10.1.1.8").policy
    assert (inline.behavior, inline.max_msgs_per_session) == ("accept", 3)
    partners = hat.decide("10.2.0.2").policy
    assert (partners.name, partners.behavior, partners.reject_banner_text) == ("PARTNERS", "reject", 'Go away "$RemoteIP"')
    everyone = hat.decide("9.9.9.9").policy
    assert (everyone.max_message_size, everyone.max_concurrency) == (2 * 1024 * 1024, 5)


def test_inline_rows_with_the_same_name_get_distinct_groups() -> None:
    policy = imported("10.1.1.0/24 REJECT\n10.1.1.0-24 TCPREFUSE\nALL ACCEPT\n")
    assert [row.group for row in policy.listener("IncomingMail").hat] == ["INLINE_10_1_1_0_24", "INLINE_10_1_1_0_24_2", "ALL"]


def test_tls_policies_get_a_certificate_to_fill_in() -> None:
    text = '$SECURE\n  ACCEPT {\n    tls = "required_verify"\n  }\nALL $SECURE\n'
    out = import_hat(text)
    listener = parse_policy(out).listener("IncomingMail")
    assert (listener.tls_cert, listener.tls_key) == ("/etc/netpolicy/IncomingMail.pem", "/etc/netpolicy/IncomingMail.key")
    assert any("tls_cert" in line and "EDIT" in line for line in out.splitlines())
    assert any("required_verify" in line and "does not verify client certificates" in line for line in out.splitlines())
    assert hat_of(parse_policy(out)).decide("1.2.3.4").policy.tls == "required"
    given = parse_policy(import_hat(text.replace("required_verify", "on"), tls_cert="/c.pem", tls_key="/k.pem"))
    assert given.listener("IncomingMail").tls_cert == "/c.pem"
    assert hat_of(given).decide("1.2.3.4").policy.tls == "preferred"


def test_inline_reputation_rows_and_the_no_score_row() -> None:
    policy = imported("$ACCEPTED\n    ACCEPT {}\nsbrs[-10:-3] TCPREFUSE\nsbrs[NONE] REJECT\nALL $ACCEPTED\n")
    hat = hat_of(policy)
    assert [row.group for row in policy.listener("IncomingMail").hat] == ["INLINE_SCORE_10_3", "INLINE_SCORE_NONE", "ALL"]
    assert hat.decide("8.8.8.8", dnslisted=lambda zone, pattern: zone == ZEN).behavior == "tcprefuse"
    assert hat.decide("8.8.8.8").behavior == "accept"  # score 0
    # Every source failed: the score is none, which only the sbrs[none] row matches.
    walk = hat.walk("8.8.8.8")
    next(walk)  # NeedScore
    with pytest.raises(StopIteration) as stop:
        walk.send(None)
    assert (stop.value.value.sender_group, stop.value.value.behavior) == ("INLINE_SCORE_NONE", "reject")


def test_no_reputation_or_geoip_block_without_such_entries() -> None:
    data = yaml.safe_load(import_hat("$ACCEPTED\n    ACCEPT {}\nG:\n    10.1.1.1, dnslist[bl.example.net]\n    $ACCEPTED\nALL $ACCEPTED\n"))
    assert "reputation" not in data and "geoip" not in data


COUNTRIES = {"CN": ["198.51.100.0/24"], "RU": ["2001:db8:c::/48"]}
COUNTRY_EXPORT = "$ACCEPTED\n    ACCEPT {}\n$BLOCKED\n    TCPREFUSE {}\nFOREIGN:\n    country[cn, ru], 10.9.9.9\n    $BLOCKED\nALL $ACCEPTED\n"


def test_country_entries_get_upper_case_codes_and_a_geoip_block(tmp_path: Path) -> None:
    database = country_database(tmp_path / "country.mmdb", COUNTRIES)
    out = import_hat(COUNTRY_EXPORT, geoip_database=str(database))
    policy = parse_policy(out)
    assert [e.text for e in policy.sender_groups["FOREIGN"]] == ["country[CN,RU]", "10.9.9.9"]
    assert policy.geoip is not None and str(policy.geoip.database) == str(database)
    hat = hat_of(policy)
    assert [hat.decide(a).sender_group for a in ("198.51.100.7", "2001:db8:c::1", "192.0.2.1")] == ["FOREIGN", "FOREIGN", "ALL"]
    lines = out.splitlines()
    intro = " ".join(lines[lines.index("geoip:") - 3 : lines.index("geoip:")])
    assert intro.startswith("# EDIT") and "GeoLite2-Country.mmdb" in intro and "geoipupdate" in intro and "DB-IP" in intro
    assert "reputation" not in yaml.safe_load(out)


def test_country_entries_need_the_database(tmp_path: Path) -> None:
    missing = tmp_path / "GeoLite2-Country.mmdb"
    with pytest.raises(ValueError, match="country database") as info:
        import_hat(COUNTRY_EXPORT, source="hat.txt", geoip_database=str(missing))
    assert not isinstance(info.value, HatImportError)
    assert str(info.value).startswith("hat.txt:6: ") and str(missing) in str(info.value)


def test_names_yaml_would_misread_are_quoted() -> None:
    policy = imported("$ON\n  ACCEPT {}\nNO:\n  10.\n  $ON\nALL $ON\n")
    assert list(policy.sender_groups) == ["NO"] and [e.text for e in policy.sender_groups["NO"]] == ["10."]
    assert list(policy.mail_flow_policies) == ["ON"]


# ---- errors name the export line ---------------------------------------------------------------

GOOD_HEAD = "$ACCEPTED\n    ACCEPT {}\n"


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        (GOOD_HEAD + "WHITELIST:\n    10.1.1.300\n    $ACCEPTED\nALL $ACCEPTED\n", "10.1.1.300", "is not an IPv4 address"),
        (GOOD_HEAD + "WHITELIST:\n    10.1.1.1\n    $TRUSTED (nope)\nALL $ACCEPTED\n", "$TRUSTED", "unknown mail flow policy $TRUSTED"),
        (GOOD_HEAD + "WHITELIST:\n    10.1.1.1\nBLACKLIST:\n    10.2.2.2\n    $ACCEPTED\nALL $ACCEPTED\n", "BLACKLIST:", "ends without its $POLICY line"),
        (GOOD_HEAD + "WHITELIST:\n    10.1.1.1\n    $ACCEPTED\nWHITELIST:\n    $ACCEPTED\nALL $ACCEPTED\n", "WHITELIST:\n    $", "appears twice"),
        (GOOD_HEAD + "$ACCEPTED\n    REJECT {}\nALL $ACCEPTED\n", "$ACCEPTED\n    REJECT", "defined twice"),
        (GOOD_HEAD + "$SLOW\n    THROTTLE {}\nALL $ACCEPTED\n", "THROTTLE", "is not a behaviour"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        max_message_size = lots\n    }\nALL $ACCEPTED\n", "lots", "not a whole number"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        max_msgs_per_session = 0\n    }\nALL $ACCEPTED\n", "= 0", "greater than 0"),
        (GOOD_HEAD + "$SLOW\n    REJECT {\n        reject_banner_code = 250\n    }\nALL $ACCEPTED\n", "= 250", "reject_banner_code"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        tls = \"sometimes\"\n    }\nALL $ACCEPTED\n", "sometimes", "expected off, on, required"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        spf_profile = \"strict\"\n    }\nALL $ACCEPTED\n", "strict", "expected on or off"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        max_concurrency = 5\n        max_concurrency = 6\n    }\nALL $ACCEPTED\n", "= 6", "given twice"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        banner = \"open\n    }\nALL $ACCEPTED\n", '"open', "unterminated quoted string"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        max_concurrency 5\nALL $ACCEPTED\n", "max_concurrency 5", "expected key = value"),
        (GOOD_HEAD + "$SLOW\n    ACCEPT {\n        max_concurrency = 5\n", "ACCEPT {\n        max_concurrency", "is not closed"),
        (GOOD_HEAD + "this is not a HAT line\nALL $ACCEPTED\n", "this is not", "cannot read"),
        (GOOD_HEAD + "sbrs[-11.0:-3.0] REJECT\nALL $ACCEPTED\n", "sbrs[", "is not sbrs[LOW:HIGH]"),
        (GOOD_HEAD + "G:\n    sbrs[ 3 : 1 ]\n    $ACCEPTED\nALL $ACCEPTED\n", "sbrs[ 3", "is not sbrs[LOW:HIGH]"),
        (GOOD_HEAD + "G:\n    sbrs[]\n    $ACCEPTED\nALL $ACCEPTED\n", "sbrs[]", "is not sbrs[LOW:HIGH]"),
        (GOOD_HEAD + "G:\n    score[-1:1]\n    $ACCEPTED\nALL $ACCEPTED\n", "score[", "sbrs[LOW:HIGH] or sbrs[none]"),
        (GOOD_HEAD + "G:\n    file:lists/drop.txt\n    $ACCEPTED\nALL $ACCEPTED\n", "file:", "netpolicy's own entries"),
        (GOOD_HEAD + "G:\n    10.1.1.1, country[usa]\n    $ACCEPTED\nALL $ACCEPTED\n", "10.1.1.1, country", "ISO 3166 two-letter codes"),
        (GOOD_HEAD + "G:\n    country[us, cn\n    $ACCEPTED\nALL $ACCEPTED\n", "country[us, cn", "is not country[CC,...]"),
        (GOOD_HEAD + "G:\n    ALL\n    $ACCEPTED\nALL $ACCEPTED\n", "    ALL", "only valid as the last HAT row"),
        (GOOD_HEAD + "$ACCEPTED (orphan)\nALL $ACCEPTED\n", "(orphan)", "outside a sender group"),
        (GOOD_HEAD + "ALL $ACCEPTED\n10.1.1.1 REJECT\n", "10.1.1.1 REJECT", "nothing may follow the ALL row"),
        ("$PASS\n    CONTINUE {}\nALL $PASS\n", "ALL $PASS", "ALL cannot use a CONTINUE policy"),
        (GOOD_HEAD + "G:\n    10.1.1.1\n", "G:", "ends without its $POLICY line"),
        (GOOD_HEAD + "$TRUSTED\n    ACCEPT {\n        max_concurrency = -1\n    }\nALL $TRUSTED\n", "= -1", "listener defaults limit it to 50"),
    ],
)
def test_errors_name_the_export_line(text: str, needle: str, message: str) -> None:
    err = error_of(text)
    line = text[: text.index(needle)].count("\n") + 1
    assert (err.line, err.source) == (line, "hat.txt")
    assert message in err.message
    assert str(err).startswith(f"hat.txt:{line}: ")


def test_missing_all_is_an_error_for_the_whole_export() -> None:
    err = error_of(GOOD_HEAD + "G:\n    10.1.1.1\n    $ACCEPTED\n")
    assert err.line == 0 and "no ALL row" in err.message


def test_unlimited_is_allowed_when_the_defaults_leave_the_key_out() -> None:
    text = GOOD_HEAD + "$TRUSTED\n    ACCEPT {\n        max_concurrency = -1\n    }\nALL $TRUSTED\n"
    policy = imported(text, defaults={"max_message_size": 1048576})
    assert hat_of(policy).decide("1.2.3.4").policy.max_concurrency is None
