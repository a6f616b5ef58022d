"""SMTP throughput: netpolicy's listener against bare aiosmtpd and Postfix, in one run.

    sudo .venv/bin/python bench/bench_smtp.py [-m 5000] [-s 20] [-l 2048] [--workers N]

Every server listens on loopback and is driven by Postfix's ``smtp-source -s S -l L -m M``
(one message per connection, S sessions in parallel). Measured, in this order:

- ``smtp-sink``: Postfix's C sink that discards everything (the ceiling of the machine);
- ``aiosmtpd``: bare aiosmtpd 1.4.6, a handler answering 250 (no policy, no disk);
- ``postfix``: a private Postfix instance (``postfix -c DIR``) with a real queue (fsync) and
  the discard transport;
- ``netpolicy``: ``SmtpListener`` with the example policy and Maildir delivery (fsync of the
  file and of ``new/``), mail log to a file. The number of Maildir files is checked against M:
  a benchmark that lost mail would be meaningless.

The netpolicy server uses a resolver answering at once ("no PTR"), which is what a warm DNS
cache gives the real ``DnsResolver``; there is no DNS server on the bench machine.
Each server runs in its own process; a short warm-up precedes every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENDER = "bench@sender.test"
RECIPIENT = "rcpt@example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)  # the banner: the server is really serving
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


# --- servers run in child processes (python bench_smtp.py --serve KIND PORT [DIR]) ----------


class _NoDns:
    async def verified_hostname(self, address: str) -> str | None:
        return None

    async def dnslisted(self, address: str, zone: str) -> bool:
        return False


def serve_netpolicy(port: int, workdir: str, workers: int) -> None:
    from netpolicy.hat import build_hat_indexes
    from netpolicy.maillog import MailLog
    from netpolicy.policy import load_policy
    from netpolicy.smtp import SmtpListener

    policy = load_policy(os.path.join(ROOT, "examples", "policy.yml"))
    model = policy.listener("IncomingMail")
    delivery = model.delivery.model_copy(update={"maildir": os.path.join(workdir, "maildir")})
    model = model.model_copy(update={"port": port, "delivery": delivery})
    hat = build_hat_indexes(policy)["IncomingMail"]
    for worker in range(1, workers):
        if os.fork() == 0:
            _run_netpolicy(model, hat, workdir, worker, workers)
            os._exit(0)
    _run_netpolicy(model, hat, workdir, 0, workers)


def _run_netpolicy(model: object, hat: object, workdir: str, worker: int, workers: int) -> None:
    from netpolicy.maillog import MailLog
    from netpolicy.smtp import SmtpListener

    async def main() -> None:
        maillog = MailLog(os.path.join(workdir, f"mail.log.{worker}"), first_id=worker + 1, id_step=workers)
        listener = SmtpListener(model, hat, _NoDns(), maillog)  # type: ignore[arg-type]
        await listener.start(reuse_port=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_aiosmtpd(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(Handler(), hostname="bench"), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the driver ---------------------------------------------------------------------------


@contextlib.contextmanager
def child(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, start_new_session=True)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@contextlib.contextmanager
def postfix_instance(port: int, workdir: str) -> Iterator[None]:
    """A private Postfix: its own config, queue and data directories; discard transport."""
    conf = os.path.join(workdir, "etc")
    os.makedirs(conf)
    queue = os.path.join(workdir, "queue")
    data = os.path.join(workdir, "data")
    os.makedirs(queue)
    os.makedirs(data)
    shutil.chown(data, "postfix")  # master's lock file lives there
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": queue,
        "data_directory": data,
        "myhostname": "bench.test",
        "mydestination": "",
        "relay_domains": "example.test",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "default_transport": "discard:",
        "relay_transport": "discard:",
        "local_transport": "discard:",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        "mynetworks": "127.0.0.0/8",
        "smtpd_peername_lookup": "no",
        "smtpd_client_connection_count_limit": "0",
        "maillog_file": os.path.join(workdir, "postfix.log"),
        "maillog_file_prefixes": workdir,
        "alias_maps": "",
        "alias_database": "",
    }
    with open(os.path.join(conf, "main.cf"), "w") as f:
        f.writelines(f"{k} = {v}\n" for k, v in settings.items())
    with open("/etc/postfix/master.cf") as src, open(os.path.join(conf, "master.cf"), "w") as dst:
        for line in src:
            if line.startswith("smtp      inet") or line.startswith("smtp inet"):
                line = f"127.0.0.1:{port} inet n - n - - smtpd\n"  # no chroot: no copies of /etc
            dst.write(line)
    env = {**os.environ, "MAIL_CONFIG": conf}
    started = subprocess.run(["postfix", "-c", conf, "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"postfix start failed; see {settings['maillog_file']}")
    try:
        wait_port(port)
        yield
    finally:
        subprocess.run(["postfix", "-c", conf, "stop"], env=env, capture_output=True)
        time.sleep(0.5)


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Wall-clock seconds smtp-source needs for ``messages`` (bounded: 300 s)."""
    args = ["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(messages),
            "-f", SENDER, "-t", RECIPIENT, "-M", "client.test", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return elapsed


def measure(name: str, port: int, args: argparse.Namespace) -> float:
    smtp_source(port, min(300, args.messages), args.sessions, args.size)  # warm-up
    elapsed = smtp_source(port, args.messages, args.sessions, args.size)
    rate = args.messages / elapsed
    print(f"{name:10s} {args.messages} messages in {elapsed:6.2f} s = {rate:7.0f} msg/s", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=5000)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    parser.add_argument("-l", "--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1, help="netpolicy SO_REUSEPORT worker processes")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port = args.serve[0], int(args.serve[1])
        if kind == "netpolicy":
            serve_netpolicy(port, args.serve[2], args.workers)
        else:
            serve_aiosmtpd(port)
        return 0
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (Debian: apt-get install postfix)", file=sys.stderr)
            return 1
    me = [sys.executable, os.path.abspath(__file__)]
    rates: dict[str, float] = {}
    work = tempfile.mkdtemp(prefix="npbench")
    os.chmod(work, 0o755)  # Postfix daemons run as the postfix user and must reach their dirs
    try:
        port = free_port()
        sink_user = ["-u", "postfix"] if os.geteuid() == 0 else []
        with child(["smtp-sink", *sink_user, f"127.0.0.1:{port}", "1024"], port):
            rates["smtp-sink"] = measure("smtp-sink", port, args)
        port = free_port()
        with child([*me, "--serve", "aiosmtpd", str(port)], port):
            rates["aiosmtpd"] = measure("aiosmtpd", port, args)
        port = free_port()
        if os.geteuid() == 0:
            with postfix_instance(port, os.path.join(work, "postfix")):
                rates["postfix"] = measure("postfix", port, args)
        else:
            print("postfix    skipped: a private Postfix instance needs root", flush=True)
        port = free_port()
        npdir = os.path.join(work, "netpolicy")
        os.makedirs(npdir)
        with child([*me, "--workers", str(args.workers), "--serve", "netpolicy", str(port), npdir], port):
            rates["netpolicy"] = measure(f"netpolicy/{args.workers}", port, args)
        stored = len(os.listdir(os.path.join(npdir, "maildir", "new")))
        expected = args.messages + min(300, args.messages)
        print(f"netpolicy  Maildir holds {stored} messages, {expected} sent", flush=True)
        if stored != expected:
            print("LOST MAIL", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    np = rates["netpolicy"]
    print(f"ratio netpolicy/aiosmtpd = {np / rates['aiosmtpd']:.2f} (goal >= 0.8)")
    if "postfix" in rates:
        print(f"ratio netpolicy/postfix  = {np / rates['postfix']:.2f} (goal >= 1.0)")
    print(f"ratio netpolicy/smtp-sink = {np / rates['smtp-sink']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
