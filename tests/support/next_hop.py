"""Next hops the SMTP hand-off tests deliver to: a scripted server whose every answer the test
chooses, and the listener environment that hands off to it.

Listens on the host's loopback, where the listener's outgoing connections start (tests/support/smtp.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import NetPair
from tests.support.smtp import SmtpEnv, policy_dict


@dataclass
class ScriptedHop:
    """A next hop answering from a script; records what it accepted."""

    mail_reply: str = "250 2.1.0 Ok"
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as HOP1"
    drop_after: int | None = None  # close the connection after this many bytes of DATA
    mute_after_data: bool = False  # read the message, never answer
    extensions: list[str] = field(default_factory=lambda: ["8BITMIME"])  # what EHLO offers
    other_reply: str = "250 Ok"  # to any other command (XCLIENT, XFORWARD, NOOP...)
    accepted: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # every command line, as received
    server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, rcpts = "", []
        writer.write(b"220 hop.test ESMTP\r\n")
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            self.commands.append(line)
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                reply = "\r\n".join(f"250{'-' if i < len(self.extensions) else ' '}{t}" for i, t in enumerate(["hop.test", *self.extensions]))
            elif verb == "MAIL":
                sender, rcpts = line[10:].split()[0].strip("<>"), []
                reply = self.mail_reply
            elif verb == "RCPT":
                rcpt = line[8:].split()[0].strip("<>")
                reply = self.rcpt_replies.get(rcpt, "250 2.1.5 Ok")
                if reply.startswith("2"):
                    rcpts.append(rcpt)
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                if self.drop_after is not None:
                    await reader.readexactly(self.drop_after)
                    writer.transport.abort()
                    return
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                if self.mute_after_data:
                    await asyncio.sleep(30)  # the mute next hop under test: never answers within the timeout
                    return
                reply = self.data_reply
                if reply.startswith("2"):
                    self.accepted.append((sender, rcpts, body))
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                reply = self.other_reply
            writer.write(reply.encode() + b"\r\n")
        writer.close()


def hop_env(pair: NetPair, tmp_path: Path, next_hop: str, timeout: int = 5) -> SmtpEnv:
    data = policy_dict(pair.server_v4, str(tmp_path / "unused"))
    data["listeners"][0]["delivery"] = {"next_hop": next_hop, "timeout": timeout}
    return SmtpEnv(pair, str(tmp_path / "unused"), data)
