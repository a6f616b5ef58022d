"""TLS per mail flow policy: off, preferred, required (SPEC.md section 3: 530 before STARTTLS)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.support.smtp import PLAIN, PORT, SmtpEnv, env, smtp_pair
from tests.support.netns import NetPair
from tests.support.wait import wait_until_async

__all__ = ["smtp_pair"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throwaway self-signed certificate for mx.example.test."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=mx.example.test"],
        check=True, capture_output=True,
    )
    return cert, key


def tls_env(pair: NetPair, tmp_path: Path, certificate: tuple[str, str], mode: str | None) -> SmtpEnv:
    cert, key = certificate
    e = env(pair, tmp_path, tls_cert=cert, tls_key=key)
    policy: dict[str, Any] = e.data["mail_flow_policies"]["ACCEPTED"]
    if mode is not None:
        policy["tls"] = mode
    return e


async def tls_client(e: SmtpEnv) -> aiosmtplib.SMTP:
    sock = e.pair.client.connect((e.pair.server_v4, PORT), source=PLAIN)
    sock.setblocking(False)
    client = aiosmtplib.SMTP(sock=sock, start_tls=False, validate_certs=False, local_hostname="client.test", timeout=5)
    await client.connect()
    return client


async def test_required_refuses_mail_before_starttls(smtp_pair: NetPair, tmp_path: Path, certificate: tuple[str, str]) -> None:
    async with tls_env(smtp_pair, tmp_path, certificate, "required") as e:
        client = await e.client(PLAIN)
        ehlo = await client.cmd("EHLO client.test")
        assert "STARTTLS" in ehlo.lines
        for line in ("MAIL FROM:<a@sender.test>", "RCPT TO:<b@example.test>", "DATA", "HELO client.test"):
            assert str(await client.cmd(line)) == "530 5.7.0 Must issue a STARTTLS command first"
        assert (await client.cmd("NOOP")).code == 250
        assert (await client.cmd("QUIT")).code == 221


async def test_required_accepts_mail_after_starttls(smtp_pair: NetPair, tmp_path: Path, certificate: tuple[str, str]) -> None:
    async with tls_env(smtp_pair, tmp_path, certificate, "required") as e:
        client = await tls_client(e)
        await client.ehlo()
        await client.starttls()
        await client.ehlo()
        assert not client.supports_extension("starttls")  # not offered twice
        errors, reply = await client.sendmail("a@sender.test", ["b@example.test"], b"Subject: tls\r\n\r\nsecret\r\n")
        assert errors == {} and reply.startswith("2.0.0")
        await client.quit()
        [name] = e.stored()
        assert " with ESMTPS id " in (Path(e.maildir) / "new" / name).read_text()
        assert e.log_lines(r"^ICID 1 TLS success protocol TLSv1\.[23] cipher \S+$")


async def test_preferred_allows_both(smtp_pair: NetPair, tmp_path: Path, certificate: tuple[str, str]) -> None:
    async with tls_env(smtp_pair, tmp_path, certificate, "preferred") as e:
        plain = await e.client(PLAIN)
        assert "STARTTLS" in (await plain.cmd("EHLO client.test")).lines
        await plain.envelope("a@sender.test", "b@example.test")
        assert (await plain.message()).code == 250
        proc = await asyncio.to_thread(
            smtp_pair.client.exec,
            ["swaks", "--server", f"{smtp_pair.server_v4}:{PORT}", "--local-interface", PLAIN, "-tls",
             "--from", "a@sender.test", "--to", "b@example.test", "--helo", "client.test"],
            False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(e.stored()) == 2 and e.log_lines("TLS success")


async def test_off_means_no_starttls(smtp_pair: NetPair, tmp_path: Path, certificate: tuple[str, str]) -> None:
    async with tls_env(smtp_pair, tmp_path, certificate, None) as e:
        client = await e.client(PLAIN)
        assert "STARTTLS" not in (await client.cmd("EHLO client.test")).lines
        assert str(await client.cmd("STARTTLS")) == "454 4.7.0 TLS not available"


async def test_failed_handshake_closes_and_logs(smtp_pair: NetPair, tmp_path: Path, certificate: tuple[str, str]) -> None:
    async with tls_env(smtp_pair, tmp_path, certificate, "required") as e:
        client = await e.client(PLAIN)
        await client.cmd("EHLO client.test")
        assert (await client.cmd("STARTTLS")).code == 220
        await client.send(b"this is not a TLS ClientHello\r\n" * 4)
        assert await client.at_eof()
        await wait_until_async(lambda: e.log_lines("ICID 1 close"), "the close log line")
        assert e.log_lines("^ICID 1 TLS failed: ")
