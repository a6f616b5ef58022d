"""What the session offers and refuses around SMTPUTF8 and DSN (SPEC.md section 9), over the
wire: SMTPUTF8 to every client, DSN only when the sink passes it on (a next hop, not a Maildir),
a UTF-8 address only after the client declared SMTPUTF8."""

from __future__ import annotations

from pathlib import Path

from tests.support.netns import NetPair
from tests.support.next_hop import ScriptedHop, hop_env
from tests.support.smtp import PLAIN, env, smtp_pair

__all__ = ["smtp_pair"]


async def test_maildir_listener_offers_smtputf8_not_dsn_and_stores_utf8_addresses(smtp_pair: NetPair, tmp_path: Path) -> None:
    async with env(smtp_pair, tmp_path) as e:
        client = await e.client(PLAIN)
        ehlo = await client.cmd("EHLO client.test")
        assert "SMTPUTF8" in ehlo.lines and "DSN" not in ehlo.lines
        assert str(await client.cmd("MAIL FROM:<a@sender.test> RET=FULL")).startswith("555 5.5.4 ")
        assert str(await client.cmd("MAIL FROM:<\u53d1@sender.test>")) == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        assert (await client.cmd("MAIL FROM:<a@sender.test>")).code == 250
        assert str(await client.cmd("RCPT TO:<\u7528\u6237@example.test>")) == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        assert (await client.cmd("RSET")).code == 250
        assert (await client.cmd("MAIL FROM:<\u53d1@sender.test> SMTPUTF8")).code == 250
        assert (await client.cmd("RCPT TO:<\u7528\u6237@example.test>")).code == 250
        assert (await client.message()).code == 250
        [name] = e.stored()
        stored = (Path(e.maildir) / "new" / name).read_text(encoding="utf-8")
        assert stored.startswith("Return-Path: <\u53d1@sender.test>\nX-Original-To: <\u7528\u6237@example.test>\n")
        assert "with UTF8SMTP id" in stored
        await client.close()


async def test_next_hop_listener_offers_dsn(smtp_pair: NetPair, tmp_path: Path) -> None:
    hop = ScriptedHop(extensions=["DSN", "SMTPUTF8"])
    async with hop_env(smtp_pair, tmp_path, await hop.start()) as e:
        client = await e.client(PLAIN)
        assert "DSN" in (await client.cmd("EHLO client.test")).lines
        assert (await client.cmd("MAIL FROM:<a@sender.test> RET=HDRS ENVID=x+2By")).code == 250
        assert (await client.cmd("RCPT TO:<b@example.test> NOTIFY=NEVER ORCPT=rfc822;b@example.test")).code == 250
        assert (await client.message()).code == 250
        assert hop.commands[1:3] == ["MAIL FROM:<a@sender.test> RET=HDRS ENVID=x+2By",
                                     "RCPT TO:<b@example.test> NOTIFY=NEVER ORCPT=rfc822;b@example.test"]
        await client.close()
    await hop.stop()
