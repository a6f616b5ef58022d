"""``netpolicy serve`` deciding by reputation score (SPEC.md section 7), end to end.

serve runs in the server namespace with the system's own resolver configuration: the namespace's
resolv.conf names the test's DNS server on 127.0.0.1:53 inside that namespace, which serves three
DNS lists (two block lists, one whitelist) and the clients' reverse zone. Clients connect from
listed and unlisted addresses across the veth link and see the HAT's verdict; the mail log's
decision line carries the score as the appliance writes it, and the country of the policy's
GeoIP database where it places the address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dns_server import DnsServer, Record, Zone, dnslist_name, resolv_conf, reverse_name
from tests.support.geoip import country_database
from tests.support.netns import NetPair
from tests.support.serve import Served
from tests.support.serve_policy import PORT
from tests.support.wait import wait_until

LISTED, SUSPECT, CLEAN, WHITELISTED, UNSCORED = "192.0.2.66", "192.0.2.55", "192.0.2.99", "192.0.2.44", "198.51.100.5"
TIMEOUT = 1.0  # the reputation block's, for all lookups of a connection

POLICY = """\
version: 1
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    hat:
      - {{group: BLACKLIST, policy: REJECTED}}
      - {{group: UNSCORED, policy: TEMPFAILED}}
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: example.test, action: accept}}
      - {{recipient: ALL, action: reject}}
    delivery: {{maildir: {maildir}}}
sender_groups:
  BLACKLIST: ["score[-10:-3]"]
  UNSCORED: ["score[none]"]
reputation:
  timeout: {timeout}
  sources:
    - {{dnslist: zen.test, answers: "127.0.0.[2..11]", weight: -6}}
    - {{dnslist: spamcop.test, weight: -3}}
    - {{dnslist: dnswl.test, answers: "127.0.[0..255].[1..3]", weight: 4}}
geoip:
  database: {geoip}
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
  REJECTED: {{behavior: reject}}
  TEMPFAILED: {{behavior: reject, reject_banner_code: 451}}
"""

LISTINGS = {
    "zen.test": {LISTED: "127.0.0.4", SUSPECT: "127.255.255.254"},  # the second: an error code, no listing
    "spamcop.test": {LISTED: "127.0.0.2", SUSPECT: "127.0.0.2"},
    "dnswl.test": {WHITELISTED: "127.0.10.2"},
}


@pytest.fixture
def reputation_served(netpair: NetPair, tmp_path: Path) -> Iterator[tuple[Served, DnsServer]]:
    for address in (LISTED, SUSPECT, CLEAN, WHITELISTED, UNSCORED):
        netpair.add_client_address(address)
    dns = DnsServer("127.0.0.1", 53, netns=netpair.server)
    dns.load(
        *(Zone(zone, [Record(dnslist_name(a, zone), "A", answer) for a, answer in hosts.items()])
          for zone, hosts in LISTINGS.items()),
        Zone("2.0.192.in-addr.arpa", [Record(reverse_name(CLEAN), "PTR", "mail.sender.test.")]),
        Zone("sender.test", [Record("mail.sender.test", "A", CLEAN)]),
    )
    dns.drop(*(dnslist_name(UNSCORED, zone) for zone in LISTINGS))
    with dns, resolv_conf(netpair.server, "127.0.0.1"):
        served = Served(netpair, tmp_path)
        geoip = country_database(tmp_path / "countries.mmdb", {"CN": ["192.0.2.64/28"], "NL": ["192.0.2.96/28"]})
        served.write_policy(text=POLICY.format(address=netpair.server_v4, port=PORT, maildir=tmp_path / "maildir",
                                               timeout=TIMEOUT, geoip=geoip))
        try:
            served.start()
            yield served, dns
        finally:
            served.stop()


def decision_line(served: Served, address: str) -> str:
    """The decision line of the connection from ``address`` (the line after its New SMTP line)."""
    def find() -> str | None:
        lines = served.log_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            if f" address {address} " in line:
                return lines[i + 1].split(" Info: ICID ", 1)[1].split(" ", 1)[1]  # without time and ICID
        return None

    return wait_until(find, f"the decision line for {address}")


def test_the_score_decides_and_the_decision_line_carries_it(reputation_served: tuple[Served, DnsServer]) -> None:
    served, dns = reputation_served
    assert served.outcome(LISTED) == "554"
    assert decision_line(served, LISTED) == "REJECT SG BLACKLIST match score[-10:-3] SBRS -9.0 country CN"
    assert served.outcome(SUSPECT) == "554"
    assert decision_line(served, SUSPECT) == "REJECT SG BLACKLIST match score[-10:-3] SBRS -3.0"  # zen's error code not counted
    assert served.outcome(CLEAN) == "220"
    assert decision_line(served, CLEAN) == "ACCEPT SG ALL match ALL SBRS 0.0 country NL"
    assert "address 192.0.2.99 reverse dns host mail.sender.test verified yes" in served.log_text()
    assert served.outcome(WHITELISTED) == "220"
    assert decision_line(served, WHITELISTED) == "ACCEPT SG ALL match ALL SBRS 4.0"
    for zone in LISTINGS:
        assert dns.queries(dnslist_name(LISTED, zone)) == 1


def test_lists_that_never_answer_are_no_score_after_the_timeout(reputation_served: tuple[Served, DnsServer]) -> None:
    served, _ = reputation_served
    started = time.monotonic()
    assert served.outcome(UNSCORED, timeout=5.0) == "451"
    waited = time.monotonic() - started
    assert TIMEOUT <= waited < TIMEOUT + 1.0, waited
    assert decision_line(served, UNSCORED) == "REJECT SG UNSCORED match score[none] SBRS none"
