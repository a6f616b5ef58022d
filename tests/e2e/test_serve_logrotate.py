"""The mail log survives rotation: logrotate with packaging/netpolicy.logrotate, serve reopens
its file on SIGUSR1 (and on SIGHUP), and neither signal stops it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.support.serve import Served
from tests.support.serve_policy import ACCEPTED
from tests.support.wait import wait_until

PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "netpolicy.logrotate"


def _config(s: Served) -> Path:
    """The packaged config, pointed at this test's mail log and serve process."""
    text = PACKAGED.read_text()
    text = text.replace("/var/log/netpolicy/mail.log", str(s.mail_log))
    text = text.replace("create 0640 netpolicy netpolicy", "create 0640 root root")
    postrotate = next(line for line in text.splitlines() if "systemctl kill" in line)
    text = text.replace(postrotate, f"        kill -USR1 {s.proc.pid}")
    path = s.tmp / "logrotate.conf"
    path.write_text(text)
    return path


def test_logrotate_with_the_packaged_config_keeps_every_line(served: Served) -> None:
    assert served.outcome(ACCEPTED) == "220"
    wait_until(lambda: served.log_text().count(" close") >= 1, "the close log line")
    before = served.log_text()
    subprocess.run(["logrotate", "--force", "--state", str(served.tmp / "logrotate.state"), str(_config(served))],
                   check=True, capture_output=True, text=True)
    rotated = served.mail_log.with_name(served.mail_log.name + ".1")
    assert rotated.read_text().startswith(before)  # delaycompress: the first rotation stays plain
    assert served.outcome(ACCEPTED) == "220"
    wait_until(lambda: " close" in served.log_text(), "the close log line in the new file")
    assert "New SMTP ICID" in served.log_text()
    assert served.proc.poll() is None  # SIGUSR1 did not end serve
    assert "mail log reopened (SIGUSR1)" in served.stderr_text()


def test_sighup_reopens_the_mail_log_too(served: Served) -> None:
    assert served.outcome(ACCEPTED) == "220"
    wait_until(lambda: " close" in served.log_text(), "the close log line")
    moved = served.mail_log.rename(served.mail_log.with_name("moved.log"))
    served.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: served.mail_log.exists(), "a new mail log")
    old = moved.read_text()
    assert served.outcome(ACCEPTED) == "220"
    wait_until(lambda: " close" in served.log_text(), "the close log line in the new file")
    assert moved.read_text() == old  # and nothing more to the moved one
    assert served.proc.poll() is None
