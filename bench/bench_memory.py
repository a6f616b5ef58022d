"""Memory held by DATA (issue 10): serve's RSS while 30 clients each send a 9.5 MB message.

    sudo .venv/bin/python bench/bench_memory.py [-n 30] [--mb 9.5] [--rounds 1]

Everything runs inside a namespace pair this script creates. The server side runs, in turn:

- ``netpolicy serve`` (the real daemon, kernel rules off) with Maildir delivery into a temp dir
  and a policy limit of 10 MB;
- a baseline: bare aiosmtpd 1.4.6 (``Controller``) whose handler writes each message to a file,
  i.e. what holding each message once in memory costs.

N clients, each from its own source address, connect at once and send one message of the given
size (76-character lines) in one ``sendall``. The server's RSS is sampled from
``/proc/PID/status`` (VmRSS every 10 ms) and its peak read from VmHWM at the end; both are
printed against the bytes in flight (N x size) and the RSS before the burst. Every message is
counted where it was stored: a run that lost or refused mail is reported as such.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.netns import NetPair, net_pair  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

NETPOLICY = str(Path(sys.executable).with_name("netpolicy"))
PORT = 2525

POLICY = """\
version: 1
listeners:
  - name: IncomingMail
    address: {address}
    port: {port}
    hostname: mx.example.test
    kernel: false
    hat:
      - {{group: ALL, policy: ACCEPTED}}
    rat:
      - {{recipient: example.test, action: accept}}
      - {{recipient: ALL, action: reject}}
    defaults: {{max_message_size: 10485760, max_concurrency: 50}}
    delivery: {{maildir: {maildir}}}
mail_flow_policies:
  ACCEPTED: {{behavior: accept}}
"""


def serve_baseline(address: str, port: int, directory: str) -> None:
    """Bare aiosmtpd: the handler stores each message in a file of its own."""
    from aiosmtpd.controller import Controller

    class Store:
        def __init__(self) -> None:
            self.n = 0

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            self.n += 1
            with open(os.path.join(directory, f"m{self.n}"), "wb") as f:
                f.write(envelope.content)  # type: ignore[attr-defined]
            return "250 OK"

    controller = Controller(Store(), hostname=address, port=port, data_size_limit=64 * 2**20)
    controller.start()
    threading.Event().wait()


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def greets(pair: NetPair, proc: subprocess.Popen[bytes]) -> bool:
    """The server answers 220; a server that exited never will."""
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with {proc.returncode}")
    with pair.client.connect((pair.server_v4, PORT), timeout=1) as sock:
        return sock.recv(512).startswith(b"220")


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The python process under ``ip netns exec`` (which execs, so usually the same pid)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else proc.pid


def send(pair: NetPair, source: str, body: bytes, replies: list[str]) -> None:
    try:
        with pair.client.connect((pair.server_v4, PORT), source=source, timeout=120) as sock:
            f = sock.makefile("rb")

            def answer() -> str:
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                return line.decode().rstrip()

            answer()
            for cmd in (b"EHLO bench.test", b"MAIL FROM:<bench@sender.test>", b"RCPT TO:<r@example.test>", b"DATA"):
                sock.sendall(cmd + b"\r\n")
                reply = answer()
                if not reply.startswith(("250", "354")):
                    replies.append(reply)
                    return
            sock.sendall(body)
            sock.sendall(b".\r\n")
            replies.append(answer())
            sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        replies.append(f"error {exc}")


def burst(pair: NetPair, pid: int, sources: list[str], body: bytes) -> tuple[int, int, int, list[str]]:
    """Idle RSS, peak RSS sampled, VmHWM and the replies of one burst."""
    idle = status(pid)["VmRSS"]
    replies: list[str] = []
    threads = [threading.Thread(target=send, args=(pair, s, body, replies)) for s in sources]
    peak = idle
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, status(pid)["VmRSS"])
        time.sleep(0.01)  # the sampling period, not a wait for anything
    for t in threads:
        t.join()
    return idle, peak, status(pid)["VmHWM"], replies


def run_server(pair: NetPair, kind: str, workdir: Path, sources: list[str], body: bytes) -> tuple[int, int, int, list[str], int]:
    store = workdir / kind
    store.mkdir()
    if kind == "netpolicy":
        policy = workdir / "policy.yml"
        policy.write_text(POLICY.format(address=pair.server_v4, port=PORT, maildir=store))
        args = [NETPOLICY, "serve", "-p", str(policy), "--mail-log", str(workdir / "mail.log")]
    else:
        args = [sys.executable, __file__, "--baseline", pair.server_v4, str(store)]
    proc = pair.server.popen(args, stdout=subprocess.DEVNULL, stderr=open(workdir / f"{kind}.err", "ab"))
    try:
        wait_until(lambda: greets(pair, proc), "the server's greeting", timeout=20, ignoring=(OSError,))
        idle, peak, hwm, replies = burst(pair, server_pid(proc), sources, body)
        stored = len(os.listdir(store / "new")) if kind == "netpolicy" else len(os.listdir(store))
    finally:
        proc.terminate()
        proc.wait(10)
    return idle, peak, hwm, replies, stored


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30, help="parallel clients (one address each)")
    parser.add_argument("--mb", type=float, default=9.5, help="message size in MB (10^6 bytes)")
    parser.add_argument("--baseline", nargs=2, metavar=("ADDRESS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        serve_baseline(args.baseline[0], PORT, args.baseline[1])
        return
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: bench\r\n\r\n" + line * int(args.mb * 1e6 / len(line))
    in_flight = args.n * len(body)
    sources = [f"198.51.100.{i + 10}" for i in range(args.n)]
    with net_pair() as pair, tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            pair.add_client_address(source)
        print(f"{args.n} clients x {len(body) / 1e6:.1f} MB = {in_flight / 2**20:.0f} MiB in flight")
        for kind in ("netpolicy", "aiosmtpd"):
            idle, peak, hwm, replies, stored = run_server(pair, kind, Path(tmp), sources, body)
            ok = sum(r.startswith("250") for r in replies)
            print(f"  {kind:9}  RSS idle {idle / 2**20:6.1f} MiB  peak sampled {peak / 2**20:6.1f} MiB  "
                  f"VmHWM {hwm / 2**20:6.1f} MiB  (+{(hwm - idle) / 2**20:6.1f} MiB = "
                  f"{(hwm - idle) / in_flight:4.2f} x in flight)  250: {ok}/{args.n}  stored: {stored}")
            others = sorted({r for r in replies if not r.startswith("250")})
            if others:
                print(f"             other replies: {others[:3]}")


if __name__ == "__main__":
    main()
