"""The command line as a user runs it: exit codes, JSON keys and messages of SPEC.md section 4."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from netpolicy.cli import cli
from tests.support.geoip import country_database

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "policy.yml")
REPUTATION_EXAMPLE = str(Path(__file__).parents[2] / "examples" / "reputation.yml")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    code, out, _ = run("validate", "-p", EXAMPLE)
    assert code == 0 and "ok" in out
    bad = tmp_path / "bad.yml"
    bad.write_text(Path(EXAMPLE).read_text().replace("127.0.0.77", "10.1.1.300").replace("max_concurrency: 50", "max_conc: 50"))
    code, _, err = run("validate", "-p", str(bad))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}:") for line in lines)
    assert "'10.1.1.300' is not an IPv4 address" in err and "unknown key 'max_conc'" in err


def test_validate_counts_what_lists_and_countries_hold(tmp_path: Path) -> None:
    database = country_database(tmp_path / "country.mmdb", {"RU": ["203.0.113.0/24", "2001:db8:c::/48"]})
    (tmp_path / "drop.txt").write_text("# two hosts next to each other, a network, an IPv6 network\n192.0.2.1\n192.0.2.2\n198.51.100.0/24\n2001:db8::/64\n")
    text = Path(EXAMPLE).read_text().replace("  BLACKLIST: [127.0.0.66,", '  BLACKLIST: ["file:drop.txt", "country[RU]", "country[FR]", 127.0.0.66,')
    policy = tmp_path / "lists.yml"
    policy.write_text(f"{text}geoip:\n  database: {database}\n")
    code, out, _ = run("validate", "-p", str(policy))
    assert code == 0
    assert out.splitlines()[1:] == [
        "  BLACKLIST: file:drop.txt: 2 IPv4 and 1 IPv6 ranges",
        "  BLACKLIST: country[RU]: 1 IPv4 and 1 IPv6 ranges",
        "  BLACKLIST: country[FR]: 0 IPv4 and 0 IPv6 ranges: no address",  # the database has none for FR
    ]


def test_trace_json_has_exactly_the_spec_keys() -> None:
    code, out, _ = run("trace", "-p", EXAMPLE, "192.0.2.9", "--json")
    assert code == 0
    assert json.loads(out) == {
        "listener": "IncomingMail",
        "address": "192.0.2.9",
        "sender_group": "BLACKLIST",
        "match": "192.0.2.0/24",
        "policy": "BLOCKED",
        "behavior": "tcprefuse",
        "enforced_in": "kernel",
    }


def test_trace_hostname_and_dnslist_are_userland() -> None:
    code, out, _ = run("trace", "-p", EXAMPLE, "127.0.0.5", "--hostname", "mx.spam.example", "--json")
    assert code == 0 and json.loads(out)["sender_group"] == "REJECTLIST" and json.loads(out)["enforced_in"] == "userland"
    code, out, _ = run("trace", "-p", EXAMPLE, "127.0.0.5", "--dnslisted", "bl.example.test", "--json")
    assert json.loads(out)["policy"] == "THROTTLED"


def test_trace_listed_reads_the_answer_given() -> None:
    for option, answer, group in (("--listed", "127.0.0.10", "SUSPECTLIST"), ("--dnslisted", "127.255.255.254", "ALL"),
                                  ("--listed", "10.0.0.1", "ALL")):
        code, out, _ = run("trace", "-p", EXAMPLE, "127.0.0.5", option, f"BL.example.test={answer}", "--json")
        assert code == 0 and json.loads(out)["sender_group"] == group, (option, answer)


def test_trace_scores_the_listed_answers() -> None:
    """examples/reputation.yml weighs zen -6, SpamCop -3, Barracuda -4, DNSWL +4."""
    for address, listed, score, group in [
        ("203.0.113.7", (), 0.0, "UNKNOWNLIST"),  # nothing lists it: 0; trace has no failed lookups, so never none
        ("203.0.113.7", ("zen.spamhaus.org=127.0.0.4",), -6.0, "BLACKLIST"),
        ("203.0.113.7", ("zen.spamhaus.org=127.255.255.254",), 0.0, "UNKNOWNLIST"),  # Spamhaus's error answer
        ("203.0.113.7", ("zen.spamhaus.org=127.0.0.4", "list.dnswl.org=127.0.10.2"), -2.0, "SUSPECTLIST"),
        ("203.0.113.7", ("list.dnswl.org=127.0.10.0",), 0.0, "UNKNOWNLIST"),  # trust 0 is outside the pattern
        ("203.0.113.7", ("bl.spamcop.net", "list.dnswl.org=127.0.10.3"), 1.0, "UNKNOWNLIST"),
        ("203.0.113.7", ("zen.spamhaus.org=127.0.0.2", "bl.spamcop.net", "b.barracudacentral.org"), -10.0, "BLACKLIST"),  # -13
        ("127.0.0.10", ("zen.spamhaus.org",), -6.0, "WHITELIST"),  # an address row decides; the score is still told
    ]:
        args = [arg for zone in listed for arg in ("--listed", zone)]
        code, out, _ = run("trace", "-p", REPUTATION_EXAMPLE, address, "--json", *args)
        result = json.loads(out)
        assert code == 0 and (result["score"], result["sender_group"]) == (score, group), listed
        assert "country" not in result  # no geoip block
    code, out, _ = run("trace", "-p", REPUTATION_EXAMPLE, "203.0.113.7", "--listed", "zen.spamhaus.org=127.0.0.4")
    assert code == 0 and any(line.split() == ["score", "-6.0"] for line in out.splitlines())


def test_trace_tells_the_country(tmp_path: Path) -> None:
    database = country_database(tmp_path / "country.mmdb", {"RU": ["203.0.113.0/24"], "CN": ["2001:db8:c::/48"]})
    text = Path(EXAMPLE).read_text().replace("  BLACKLIST: [127.0.0.66,", '  BLACKLIST: ["country[RU]", 127.0.0.66,')
    policy = tmp_path / "countries.yml"
    policy.write_text(f"{text}geoip:\n  database: {database}\n")
    for address, group, match, country, enforced in [
        ("203.0.113.5", "BLACKLIST", "country[RU]", "RU", "kernel"),  # a country entry is an address entry
        ("2001:db8:c::1", "ALL", "ALL", "CN", "userland"),
        ("10.1.1.1", "ALL", "ALL", None, "userland"),  # not in the database
    ]:
        code, out, _ = run("trace", "-p", str(policy), address, "--json")
        result = json.loads(out)
        assert code == 0 and "score" not in result, address
        assert (result["sender_group"], result["match"], result["country"], result["enforced_in"]) == (group, match, country, enforced)
    code, out, _ = run("trace", "-p", str(policy), "203.0.113.5")
    assert any(line.split() == ["country", "RU"] for line in out.splitlines())


def test_trace_human_output_and_bad_input() -> None:
    code, out, _ = run("trace", "-p", EXAMPLE, "127.0.0.77")
    assert code == 0 and "REJECTLIST" in out and "reject" in out
    code, _, err = run("trace", "-p", EXAMPLE, "10.1.1.300")
    assert code == 2 and "not an IPv4 address" in err
    code, _, err = run("trace", "-p", EXAMPLE, "10.1.1.3", "--listener", "Nope")
    assert code == 2 and "no listener 'Nope'" in err


def test_compile_json_shape() -> None:
    code, out, _ = run("compile", "-p", EXAMPLE, "--json")
    assert code == 0
    lst = json.loads(out)["listeners"][0]
    assert {"name", "address", "port", "refuse", "userland_only"} <= set(lst)
    assert lst["refuse"]["ipv4"][:2] == ["127.0.0.66/32", "192.0.2.0/24"]
    assert lst["refuse"]["ipv6"] == ["2001:db8:bad::/48"]


def test_schema_and_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "netpolicy", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(proc.stdout)
    assert "listeners" in schema["properties"] and schema["additionalProperties"] is False


def test_policy_from_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NETPOLICY_POLICY", EXAMPLE)
    code, out, _ = run("validate")
    assert code == 0 and EXAMPLE in out


def test_import_hat_writes_a_policy_that_validates(tmp_path: Path) -> None:
    export = Path(__file__).parents[1] / "data" / "hat_export.txt"
    code, out, _ = run("import-hat", str(export), "--port", "2600")
    assert code == 0
    policy_file = tmp_path / "imported.yml"
    policy_file.write_text(out)
    code, _, _ = run("validate", "-p", str(policy_file))
    assert code == 0
    code, out, _ = run("trace", "-p", str(policy_file), "203.0.113.9", "--json")
    assert json.loads(out)["behavior"] == "tcprefuse"
    # The export's sbrs[-10.0:-3.0] BLACKLIST, scored by the imported reputation block.
    code, out, _ = run("trace", "-p", str(policy_file), "8.8.4.4", "--listed", "zen.spamhaus.org=127.0.0.3", "--json")
    assert (json.loads(out)["sender_group"], json.loads(out)["match"], json.loads(out)["score"]) == ("BLACKLIST", "score[-10.0:-3.0]", -6.0)


def test_import_hat_country_entries_read_the_database_given(tmp_path: Path) -> None:
    export = tmp_path / "hat.txt"
    export.write_text("$BLOCKED\n    TCPREFUSE {}\nFOREIGN:\n    country[ru]\n    $BLOCKED\nALL $BLOCKED\n")
    missing = tmp_path / "GeoLite2-Country.mmdb"
    code, _, err = run("import-hat", str(export), "--geoip-database", str(missing))
    assert code == 1 and err.startswith(f"{export}:4: ") and "country database" in err
    database = country_database(missing, {"RU": ["198.51.100.0/24"]})
    code, out, _ = run("import-hat", str(export), "--geoip-database", str(database))
    assert code == 0 and f"database: {database}" in out
    policy_file = tmp_path / "imported.yml"
    policy_file.write_text(out)
    code, _, _ = run("validate", "-p", str(policy_file))
    assert code == 0


def test_import_hat_error_names_the_line(tmp_path: Path) -> None:
    export = tmp_path / "x.txt"
    export.write_text("$ACCEPTED\n    ACCEPT\nnonsense here\n")
    code, _, err = run("import-hat", str(export))
    assert code == 1 and err.startswith(f"{export}:3:")


# Run in a child: which modules a command loaded is a fact of the process, not of this test run.
LOADED_AFTER = """
import sys
from netpolicy.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="netpolicy")
except SystemExit:
    pass
print("\\n".join(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_after(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", LOADED_AFTER, *args], capture_output=True, text=True, check=True)
    return set(proc.stderr.split())


def test_commands_import_only_what_they_need() -> None:
    """Start-up is most of a small command: the pydantic model ~130 ms, rich ~30 ms, kernel ~20 ms."""
    heavy = {"pydantic", "yaml", "rich", "netpolicy.kernel", "netpolicy.model.policy"}
    assert not heavy & loaded_after("schema")
    assert not heavy & loaded_after("--help")
    loaded = loaded_after("validate", "-p", EXAMPLE)
    assert {"pydantic", "netpolicy.model.policy"} <= loaded
    assert not {"rich", "netpolicy.kernel", "netpolicy.model.compiler", "netpolicy.model.hat", "netpolicy.model.hat_import"} & loaded


def test_backend_choices_are_the_kernels() -> None:
    from netpolicy import cli as cli_module
    from netpolicy.kernel import BACKENDS

    assert cli_module.BACKENDS == BACKENDS
