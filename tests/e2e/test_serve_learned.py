"""Learned refusals through ``netpolicy serve`` (SPEC.md section 7), end to end.

serve runs in the server namespace and asks the test's DNS server (127.0.0.1:53 in that
namespace, named by the namespace's resolv.conf). The HAT refuses (TCPREFUSE) what the DNS list
``bl.test`` lists, below a DNS whitelist. A listed client's first connection reaches userland
(handshake, then RST); the refusal is learned into the kernel for the answers' TTL, so its next
connections are refused at SYN (ECONNREFUSED) while others still get the banner; once the TTL
is over it reaches userland again. What the kernel holds is read back with a backend of the
test's own in the server namespace.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netpolicy.kernel.base import Backend
from tests.support.dns_server import DnsServer, Record, Zone, dnslist_name, resolv_conf
from tests.support.kernel import backend_in
from tests.support.netns import NetPair
from tests.support.serve import NETPOLICY, Served
from tests.support.serve_policy import PORT
from tests.support.wait import wait_until

pytestmark = pytest.mark.netns

LISTED, LISTED_LONG, FAILING, CLEAN, REJECTED = "192.0.2.30", "192.0.2.31", "192.0.2.32", "192.0.2.33", "192.0.2.34"
SHORT_TTL, LONG_TTL = 3, 300
METRICS = "127.0.0.1:9108"

POLICY = """\
version: 1
learn_refusals: {learn}
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    hat:
      - {{group: WHITELIST, policy: ACCEPTED}}
      - {{group: BLACKLIST, policy: BLOCKED}}
      - {{group: REJECTLIST, policy: REJECTED}}
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: example.test, action: accept}}
      - {{recipient: ALL, action: reject}}
    delivery: {{maildir: {maildir}}}
sender_groups:
  WHITELIST: ["dnslist[wl.test]"]
  BLACKLIST: ["dnslist[bl.test]"]
  REJECTLIST: [{rejected}]
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
  REJECTED: {{behavior: reject, promote_after: 2, promote_for: 300}}
"""


@dataclass
class Learning:
    served: Served
    dns: DnsServer
    kernel: Backend

    def learned(self) -> dict[str, float]:
        """Address -> seconds left, of what the kernel holds in the learned sets."""
        return {r.address: r.expires_in for r in self.served.pair.server.call(self.kernel.learned)}

    def wait_learned(self, address: str) -> float:
        return wait_until(lambda: self.learned().get(address), f"{address} learned into the kernel")

    def decisions(self, address: str) -> int:
        """Connections from ``address`` the mail log has decided."""
        return self.served.log_text().count(f" address {address} ")

    def reload(self, text: str, expect: str) -> None:
        self.served.write_policy(text=text)
        self.served.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: expect in self.served.stderr_text(), f"the reload's log line ({expect})")

    def scrape(self) -> str:
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())"
        return self.served.pair.server.exec([sys.executable, "-c", fetch]).stdout


def policy(served: Served, learn: int = 3600, rejected: str = REJECTED) -> str:
    return POLICY.format(learn=learn, address=served.pair.server_v4, port=PORT, maildir=served.tmp / "maildir", rejected=rejected)


@pytest.fixture
def learning(netpair: NetPair, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Learning]:
    backend, learn = getattr(request, "param", ("nftables", 3600))
    for address in (LISTED, LISTED_LONG, FAILING, CLEAN, REJECTED):
        netpair.add_client_address(address)
    kernel = backend_in(netpair.server, backend)
    dns = DnsServer("127.0.0.1", 53, netns=netpair.server)
    dns.load(
        Zone("bl.test", [Record(dnslist_name(LISTED, "bl.test"), "A", "127.0.0.2", ttl=SHORT_TTL),
                         *(Record(dnslist_name(a, "bl.test"), "A", "127.0.0.2", ttl=LONG_TTL) for a in (LISTED_LONG, FAILING))]),
        Zone("wl.test", [], negative_ttl=3600),  # its "not listed" outlasts every listing
    )
    dns.servfail(dnslist_name(FAILING, "wl.test"))
    with dns, resolv_conf(netpair.server, "127.0.0.1"):
        served = Served(netpair, tmp_path)
        served.write_policy(text=policy(served, learn))
        try:
            verbose = ["--verbose-connections"] if backend == "nftables" else []  # NFLOG: nftables only
            served.launch([NETPOLICY, "serve", "-p", str(served.policy), "--mail-log", str(served.mail_log), "--interval", "0.2",
                           "--backend", backend, "--metrics", METRICS, *verbose])
            yield Learning(served, dns, kernel)
        finally:
            served.stop()


@pytest.mark.parametrize("learning", [("nftables", 3600), ("iptables", 3600)], indirect=True, ids=["nftables", "iptables"])
def test_a_dns_listed_refusal_is_learned_for_the_answers_ttl(learning: Learning) -> None:
    served = learning.served
    assert served.outcome(LISTED) == "reset"  # userland: the handshake, then RST
    left = learning.wait_learned(LISTED)
    learned_at = time.monotonic()
    assert 0 < left <= SHORT_TTL
    assert served.outcome(LISTED) == "refused"  # at SYN
    assert served.outcome(CLEAN) == "220"  # the listener is up
    assert learning.decisions(LISTED) == 1
    if learning.kernel.name == "nftables":  # the kernel's refusal, logged for why it was learned
        wait_until(lambda: "ICID 0 TCPREFUSE SG BLACKLIST match dnslist[bl.test]" in served.log_text(), "the kernel refusal's line")
    metrics = learning.scrape()
    assert 'netpolicy_learned_refusals_total{listener="IncomingMail"} 1.0' in metrics
    assert 'netpolicy_learned_refusals_held{listener="IncomingMail"} 1.0' in metrics
    wait_until(lambda: served.outcome(LISTED, timeout=0.5) != "refused", "the learned refusal to run out", timeout=SHORT_TTL + 5)
    assert time.monotonic() - learned_at >= SHORT_TTL - 1.5, "the learned refusal ended before the answer's TTL"
    assert learning.decisions(LISTED) == 2  # decided in userland again, with a fresh answer
    assert learning.dns.queries(dnslist_name(LISTED, "bl.test")) == 2
    learning.wait_learned(LISTED)


def test_a_reload_that_changes_the_policy_forgets_learned_refusals_and_keeps_promotions(learning: Learning) -> None:
    served = learning.served
    assert served.outcome(LISTED_LONG) == "reset"
    assert 0 < learning.wait_learned(LISTED_LONG) <= LONG_TTL
    for _ in range(2):
        assert served.outcome(REJECTED) == "554"
    wait_until(lambda: f"promoted {REJECTED}" in served.stderr_text(), "the promotion's log line")
    learning.reload(policy(served), "unchanged")
    assert LISTED_LONG in learning.learned()
    learning.reload(policy(served, rejected=f"{REJECTED}, 192.0.2.200"), "reload (SIGHUP): now at policy generation")
    assert learning.learned() == {}
    assert [p.address for p in served.pair.server.call(learning.kernel.promoted)] == [REJECTED]
    assert served.outcome(REJECTED) == "refused"
    assert served.outcome(LISTED_LONG) == "reset"  # userland again, and learned under the new policy
    learning.wait_learned(LISTED_LONG)
    assert served.outcome(LISTED_LONG) == "refused"


def test_a_flushed_ruleset_is_repaired_with_the_learned_refusals_back(learning: Learning) -> None:
    served = learning.served
    assert served.outcome(LISTED_LONG) == "reset"
    learning.wait_learned(LISTED_LONG)
    served.pair.server.exec(["nft", "flush", "ruleset"])
    wait_until(lambda: "restored 1 learned refusals on IncomingMail" in served.stderr_text(), "the learned refusal restored")
    assert LONG_TTL - 30 < learning.learned()[LISTED_LONG] <= LONG_TTL
    assert served.outcome(LISTED_LONG) == "refused"
    assert learning.decisions(LISTED_LONG) == 1


def test_a_refusal_resting_on_a_failed_lookup_is_not_learned(learning: Learning) -> None:
    """The whitelist's lookup fails (SERVFAIL: TTL 0) and the blacklist refuses: had the
    whitelist answered, the host might have been let in, so nothing is learned. The listed host
    after it is learned in the same queue, so by then the first would have been too."""
    served = learning.served
    assert served.outcome(FAILING) == "reset"
    wait_until(lambda: learning.decisions(FAILING) == 1, "the failing host's decision")
    assert served.outcome(LISTED_LONG) == "reset"
    learning.wait_learned(LISTED_LONG)
    assert FAILING not in learning.learned()
    assert served.outcome(FAILING) == "reset"


@pytest.mark.parametrize("learning", [("nftables", 0)], indirect=True, ids=["learn_refusals-0"])
def test_learn_refusals_0_learns_nothing(learning: Learning) -> None:
    served = learning.served
    for n in range(1, 4):
        assert served.outcome(LISTED_LONG) == "reset"
        wait_until(lambda n=n: learning.decisions(LISTED_LONG) == n, "the decision of each connection")  # type: ignore[misc]
    assert learning.learned() == {}
    assert "netpolicy_learned_refusals_total{" not in learning.scrape()
