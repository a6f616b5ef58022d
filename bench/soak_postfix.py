"""Soak with faults through ``netpolicy serve`` to a real Postfix (issue 14 item 3).

    sudo .venv/bin/python bench/soak_postfix.py [-m 20000] [-s 20]

M messages, each with a unique token, one per connection from S concurrent clients in a client
namespace, through serve to a private Postfix in the server namespace, while Postfix is killed
and restarted (three times), stalled (SIGSTOP of its smtpd processes), and serve is restarted
(SIGTERM) and crashed (SIGKILL). Then every token is counted in Postfix's hold queue and the
figures printed: messages, 250s, 4xx, dropped, lost (heard 250, not queued), duplicated (queued
twice) and queued without a 250 (the copies a retry would duplicate). The soak itself is
tests/support/soak.py; tests/e2e/test_postfix_soak.py runs it with 2,000 messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.netns import net_pair  # noqa: E402
from tests.support.soak import Soak, soak_setup  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=20000)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("postfix"):
        print("needs root (namespaces, a private Postfix) and the postfix package", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="npsoak"))
    work.chmod(0o755)
    try:
        with net_pair() as pair, soak_setup(pair, work) as (served, hop):
            figures = asyncio.run(Soak(pair, served, hop, args.messages, args.sessions).run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(figures.report())
    return 0 if figures.lost == 0 and figures.duplicated == 0 and figures.outcomes["5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
