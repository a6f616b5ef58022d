"""The policy `serve` runs under in the serve tests and in bench/bench_serve.py: one listener,
a blocked group (TCPREFUSE), a rejected group that promotes, everyone else accepted."""

from __future__ import annotations

import os
from pathlib import Path

PORT = 2525
BLOCKED, REJECTED, ACCEPTED, LATER = "192.0.2.66", "192.0.2.77", "192.0.2.99", "198.51.100.5"

POLICY = """\
version: 1
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    kernel: {kernel}
    hat:
      - {{group: BLACKLIST, policy: BLOCKED}}
      - {{group: REJECTLIST, policy: REJECTED}}
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: example.test, action: accept}}
      - {{recipient: ALL, action: reject}}
    delivery: {{maildir: {maildir}}}
sender_groups:
  BLACKLIST: [{blacklist}]
  REJECTLIST: [{rejected}]
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
  BLOCKED:  {{behavior: tcprefuse}}
  REJECTED: {{behavior: reject, promote_after: 3, promote_for: 3}}
"""


def policy_text(address: str, maildir: Path, blacklist: str = BLOCKED, kernel: bool = True) -> str:
    return POLICY.format(address=address, port=PORT, kernel=str(kernel).lower(), maildir=maildir,
                         blacklist=blacklist, rejected=REJECTED)


def write_policy(path: Path, address: str, maildir: Path, blacklist: str = BLOCKED, kernel: bool = True,
                 text: str | None = None) -> None:
    """Replace the policy file in one rename, as an editor or Ansible would (so a reload never
    reads half a file)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text if text is not None else policy_text(address, maildir, blacklist, kernel))
    os.replace(tmp, path)
