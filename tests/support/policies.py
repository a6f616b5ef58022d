"""Small policies for unit tests: one listener, HAT rows given as (group, behaviour), or as YAML text."""

from __future__ import annotations

from collections.abc import Sequence

from netpolicy.model.policy import Policy

# One loopback listener whose only sender group is a DNS list; ``{maildir}`` is filled per test.
LOOPBACK_POLICY = """\
version: 1
listeners:
  - name: In
    type: private
    address: 127.0.0.1
    port: 2525
    hat:
      - {{group: LISTED, policy: BLOCKED}}
      - {{group: ALL, policy: OPEN}}
    delivery: {{maildir: {maildir}}}
sender_groups:
  LISTED: ["dnslist[bl.example.test]"]
mail_flow_policies:
  OPEN: {{behavior: accept}}
  BLOCKED: {{behavior: tcprefuse}}
"""


def make_policy(
    rows: Sequence[tuple[str, str]],
    groups: dict[str, list[str]],
    *,
    kernel: bool = True,
    all_behavior: str = "accept",
) -> Policy:
    """A policy whose HAT is ``rows`` then ``ALL``; each row gets a policy named after it."""
    hat = [{"group": g, "policy": f"P{i}"} for i, (g, _) in enumerate(rows)] + [{"group": "ALL", "policy": "PALL"}]
    policies = {f"P{i}": {"behavior": b} for i, (_, b) in enumerate(rows)}
    policies["PALL"] = {"behavior": all_behavior}
    return Policy.model_validate(
        {
            "version": 1,
            "listeners": [
                {"name": "L", "address": "10.0.0.1", "port": 25, "kernel": kernel, "hat": hat, "rat": [{"recipient": "ALL", "action": "accept"}]}
            ],
            "sender_groups": groups,
            "mail_flow_policies": policies,
        }
    )
