"""Message checks through rspamd (SPEC.md section 8): one ``POST /checkv2`` per message, asked
at the end of DATA before the client hears anything, for the checks its policy wants only.

rspamd is asked with the envelope it would get from an MTA's milter (client IP, HELO, the
verified host name, sender, one ``Rcpt`` per recipient, the MID as ``Queue-Id``) and a
per-request ``Settings`` object: a policy without ``spam_check`` runs only the groups of the
checks it asks for (``groups_enabled``), one with it runs rspamd's rules but the groups it does
not want (``groups_disabled``). DMARC needs SPF and DKIM results, so ``dmarc`` runs both; only
the checks asked for are reported. rspamd answers GTUBE with ``reject`` whatever the settings
say, so its action counts only when ``spam_check`` is on.

The verdict is netpolicy's, read from rspamd's symbols (SPEC.md section 8's table): a virus
symbol is 554, a DMARC ``p=reject`` failure or the ``reject`` action 550, ``soft reject`` and
``greylist`` 451, ``add header`` / ``rewrite subject`` a 250 with ``X-Spam`` headers.
``Authentication-Results`` (RFC 8601) is written from the SPF, DKIM and DMARC symbols, so it
does not depend on rspamd's milter_headers configuration. Whatever comes back from rspamd
(virus names, domains, its SMTP message) reaches the wire and the log only through
``_printable``/``_token``: a crafted signature domain must not end a header or a log line.
Before a message passes with these, the session removes the ones a sender forged in our name
(``claims_to_be_ours``; RFC 8601 section 5), so a filter after us reads only ours.

Faults (rspamd down, slower than ``timeout``, a 5xx, an answer that is not rspamd's JSON, the
connection closed mid-answer, an antivirus rule that could not reach its scanner) follow
``on_error``: ``tempfail`` answers 451 4.7.1 and the client keeps the message; ``accept`` passes
it on unscanned and says so in the mail log. No path gives 250 to a message that was neither
scanned nor allowed through unscanned.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from netpolicy.model.effective import EffectivePolicy
from netpolicy.model.policy import Scanner, split_rspamd_url
from netpolicy.smtp.delivery import Reply
from netpolicy.smtp.headers import HeaderField, authserv_id
from netpolicy.smtp.maillog import MailLog
from netpolicy.smtp.spool import Spool

ACTIONS = frozenset({"no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"})
# Latency buckets (seconds): a clean message takes rspamd 10-20 ms on loopback, a lookup-heavy
# one hundreds; the top buckets show timeouts coming.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_SPF = {"R_SPF_ALLOW": "pass", "R_SPF_FAIL": "fail", "R_SPF_SOFTFAIL": "softfail", "R_SPF_NEUTRAL": "neutral",
        "R_SPF_NA": "none", "R_SPF_DNSFAIL": "temperror", "R_SPF_PERMFAIL": "permerror"}
_DKIM = {"R_DKIM_ALLOW": "pass", "R_DKIM_REJECT": "fail", "R_DKIM_TEMPFAIL": "temperror", "R_DKIM_PERMFAIL": "permerror"}
_DMARC = {"DMARC_POLICY_ALLOW": "pass", "DMARC_POLICY_ALLOW_WITH_FAILURES": "pass", "DMARC_POLICY_REJECT": "fail",
          "DMARC_POLICY_QUARANTINE": "fail", "DMARC_POLICY_SOFTFAIL": "fail", "DMARC_NA": "none",
          "DMARC_DNSFAIL": "temperror", "DMARC_BAD_POLICY": "permerror"}
_SPF_LOG = {"pass": "Pass", "fail": "Fail", "softfail": "SoftFail", "neutral": "Neutral", "none": "None",
            "temperror": "TempError", "permerror": "PermError"}
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,255}\Z")  # an RFC 8601 pvalue without quoting
# The fields _judge writes, which a sender could forge to fool filters after us (X-Spam-Flag and
# the like are other scanners' and stay).
FORGEABLE = frozenset({"x-spam", "x-spam-score", "authentication-results"})
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Checks:
    """The checks one message gets (the resolved policy's five switches)."""

    spam: bool = False
    virus: bool = False
    spf: bool = False
    dkim: bool = False
    dmarc: bool = False

    @classmethod
    def of(cls, policy: EffectivePolicy) -> Checks:
        return cls(policy.spam_check, policy.virus_check, policy.spf, policy.dkim, policy.dmarc)

    @property
    def authentication(self) -> bool:
        return self.spf or self.dkim or self.dmarc

    def settings(self) -> str:
        """rspamd's per-request settings (the ``Settings`` header) running only these checks."""
        groups = {"antivirus": self.virus, "spf": self.spf or self.dmarc, "dkim": self.dkim or self.dmarc, "dmarc": self.dmarc}
        if self.spam:
            return json.dumps({"groups_disabled": sorted(g for g, on in groups.items() if not on)})
        return json.dumps({"groups_enabled": sorted(g for g, on in groups.items() if on)})


@dataclass(frozen=True)
class ScanEnvelope:
    """What rspamd is told about the message besides its text."""

    mid: int
    address: str
    helo: str
    hostname: str | None  # verified reverse DNS name
    sender: str
    recipients: list[str]
    receiver: str  # our host name: the authserv-id of Authentication-Results


@dataclass(frozen=True)
class Verdict:
    """What the session does with the message: ``reply`` it (refused), or pass it on with
    ``headers`` put in front."""

    outcome: str  # the metric label
    reply: Reply | None = None
    headers: bytes = b""


class ScanError(Exception):
    """rspamd did not give a usable answer (the message is not scanned)."""


@dataclass
class ScanStats:
    """Scans by verdict and their latency, read by the prometheus collector at scrape time."""

    verdicts: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe(self, outcome: str, seconds: float) -> None:
        self.verdicts[outcome] += 1
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus histogram buckets (``le`` label, cumulative count), ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            total += n
            out.append((str(bound), float(total)))
        out.append(("+Inf", float(self.latency_count)))
        return out


@dataclass(frozen=True)
class _Answer:
    action: str
    score: float
    symbols: Mapping[str, list[str]]  # symbol -> its options
    smtp_message: str | None


class RspamdClient:
    """The process's client of rspamd: one connection pool, the scanner block in force
    (``settings``, replaced on reload; None when the policy has none) and the scan counters."""

    def __init__(self, settings: Scanner | None = None) -> None:
        self.settings = settings
        self.stats = ScanStats()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, checks: Checks, envelope: ScanEnvelope, message: Spool, maillog: MailLog) -> Verdict:
        """Scan ``message`` for ``checks``, log what was found, and say what to do with it."""
        settings = self.settings
        started = time.monotonic()
        try:
            if settings is None:
                raise ScanError("no scanner block in the policy")
            answer = await self._ask(settings, checks, envelope, message)
            verdict = _judge(settings, checks, envelope, answer, maillog)
        except ScanError as exc:
            verdict = _fault(settings, envelope.mid, str(exc), maillog)
        self.stats.observe(verdict.outcome, time.monotonic() - started)
        if verdict.reply is not None:
            maillog.scan_refused(envelope.mid, str(verdict.reply))
        return verdict

    async def _ask(self, settings: Scanner, checks: Checks, envelope: ScanEnvelope, message: Spool) -> _Answer:
        host, port = split_rspamd_url(settings.rspamd)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/checkv2"
        # The HELO is the client's text: a control character in it would end the header line
        # (aiohttp refuses the request instead). Addresses were read by RFC 5321's grammar.
        headers = [("IP", envelope.address), ("Helo", _CONTROL.sub("?", envelope.helo)),
                   ("Hostname", envelope.hostname or "unknown"), ("From", envelope.sender or "<>"),
                   *(("Rcpt", r) for r in envelope.recipients), ("Queue-Id", str(envelope.mid)),
                   ("Settings", checks.settings()), ("Content-Length", str(message.size))]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            async with asyncio.timeout(settings.timeout):
                async with self._session.post(url, data=_body(message), headers=headers) as response:
                    if response.status != 200:
                        raise ScanError(f"rspamd answered HTTP {response.status}")
                    body = await response.read()
        except TimeoutError:
            raise ScanError(f"rspamd did not answer within {settings.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ScanError(f"rspamd unreachable or closed the connection ({type(exc).__name__}: {exc})") from None
        return _parse(body)


async def _body(message: Spool) -> AsyncIterator[bytes]:
    for block in message.blocks():
        yield block


def _parse(body: bytes) -> _Answer:
    """rspamd's JSON, every field used checked for its type: anything else is garbage."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ScanError("rspamd's answer is not JSON") from None
    if not isinstance(data, dict):
        raise ScanError("rspamd's answer is not a JSON object")
    action, score, symbols = data.get("action"), data.get("score"), data.get("symbols", {})
    if action not in ACTIONS:
        raise ScanError(f"rspamd's answer has no known action ({_printable(str(action))})")
    if isinstance(score, bool) or not isinstance(score, int | float) or not isinstance(symbols, dict):
        raise ScanError("rspamd's answer has no score or symbols")
    parsed: dict[str, list[str]] = {}
    for name, symbol in symbols.items():
        options = symbol.get("options", []) if isinstance(symbol, dict) else None
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ScanError(f"rspamd's answer has a malformed symbol {_printable(name)}")
        parsed[name] = options
    messages = data.get("messages", {})
    smtp_message = messages.get("smtp_message") if isinstance(messages, dict) else None
    return _Answer(action, float(score), parsed, smtp_message if isinstance(smtp_message, str) else None)


def _fault(settings: Scanner | None, mid: int, reason: str, maillog: MailLog) -> Verdict:
    if settings is not None and settings.on_error == "accept":
        maillog.scan_failed(mid, reason, "passed on unscanned (on_error accept)")
        return Verdict("error-accepted")
    maillog.scan_failed(mid, reason, "the client keeps the message (451)")
    return Verdict("error-tempfailed", Reply(451, "4.7.1 Message checks unavailable, try again later"))


def _judge(settings: Scanner, checks: Checks, envelope: ScanEnvelope, answer: _Answer, maillog: MailLog) -> Verdict:
    """Log what each check found (SPEC.md section 8's lines, in its order) and decide."""
    symbols = answer.symbols
    mid = envelope.mid
    refusal: Verdict | None = None
    if checks.spam:
        maillog.spam_verdict(mid, answer.score, answer.action)
    if checks.virus:
        failed = [s for s in settings.virus_symbols if f"{s}_FAIL" in symbols]
        if failed:
            raise ScanError(f"rspamd's antivirus could not scan ({', '.join(failed)})")
        names = [_printable(o) for s in settings.virus_symbols if s in symbols for o in symbols[s] or [s]]
        maillog.antivirus(mid, names)
        if names:
            refusal = Verdict("virus", Reply(554, f"5.7.0 Message rejected: virus {names[0]}"))
    results: list[str] = []
    if checks.spf:
        spf = next((r for s, r in _SPF.items() if s in symbols), "none")
        maillog.spf(mid, envelope.sender or "<>", _SPF_LOG[spf])
        identity = f"smtp.mailfrom={envelope.sender}" if envelope.sender else f"smtp.helo={envelope.helo}"
        results.append(f"spf={spf}" + (f" {identity}" if _TOKEN.match(identity.split("=", 1)[1]) else ""))
    if checks.dkim:
        results += _dkim(mid, symbols, maillog)
    if checks.dmarc:
        dmarc = next(((s, r) for s, r in _DMARC.items() if s in symbols), ("", "none"))
        options = symbols.get(dmarc[0], [])
        domain = _token(options[0].split(" : ", 1)[0]) if options else None
        policy = _token(options[1]) if len(options) > 1 else None
        maillog.dmarc(mid, dmarc[1], policy, domain)
        results.append(f"dmarc={dmarc[1]}" + (f" (p={policy})" if policy else "") + (f" header.from={domain}" if domain else ""))
        if dmarc[0] == "DMARC_POLICY_REJECT" and refusal is None:
            refusal = Verdict("dmarc-reject", Reply(550, f"5.7.1 {_printable(answer.smtp_message or '') or 'Message rejected as spam'}"))
    headers = ""
    if checks.authentication:
        headers += f"Authentication-Results: {envelope.receiver};\r\n\t" + ";\r\n\t".join(results) + "\r\n"
    if refusal is not None:
        return refusal
    if checks.spam:
        action = answer.action
        if action == "reject":
            return Verdict("spam-reject", Reply(550, f"5.7.1 {_printable(answer.smtp_message or '') or 'Message rejected as spam'}"))
        if action in ("soft reject", "greylist"):
            return Verdict("tempfail", Reply(451, "4.7.1 Try again later"))
        if action in ("add header", "rewrite subject"):
            headers += f"X-Spam: Yes\r\nX-Spam-Score: {answer.score:.2f}\r\n"
            return Verdict("spam-marked", None, headers.encode("ascii"))
    return Verdict("clean", None, headers.encode("ascii"))


def claims_to_be_ours(receiver: str) -> Callable[[HeaderField], bool]:
    """Picks, among the ``FORGEABLE`` fields, those a sender may have forged in our name, to
    remove before ours are added: ``X-Spam`` and ``X-Spam-Score``, and every
    ``Authentication-Results`` carrying our authserv-id, which RFC 8601 section 5 says an MTA
    must remove (other hosts' results stay). One whose authserv-id cannot be read within its
    first ``headers.HEAD`` bytes could be ours, so it goes too. A host name is the same with
    or without its final dot."""
    ours = receiver.lower().rstrip(".")

    def unwanted(f: HeaderField) -> bool:
        if f.name.lower() != "authentication-results":
            return True
        found = authserv_id(f.value_head, f.whole)
        return found is None or found.rstrip(".") == ours

    return unwanted


def _dkim(mid: int, symbols: Mapping[str, list[str]], maillog: MailLog) -> list[str]:
    """One result per signature (rspamd's options read ``domain:s=selector``)."""
    results: list[str] = []
    for symbol, result in _DKIM.items():
        for option in symbols.get(symbol, []):
            domain, _, selector = option.partition(":s=")
            d, s = _token(domain), _token(selector)
            maillog.dkim(mid, result, d, s)
            results.append(f"dkim={result}" + (f" header.d={d}" if d else "") + (f" header.s={s}" if s else ""))
    if not results:
        maillog.dkim(mid, "none", None, None)
        results.append("dkim=none")
    return results


def _token(text: str) -> str | None:
    """``text`` when it can stand in a header as it is, else None (then it is left out)."""
    return text if _TOKEN.match(text) else None


def _printable(text: str, limit: int = 200) -> str:
    """Text from rspamd for a reply or a log line: printable ASCII only, bounded."""
    return _UNPRINTABLE.sub("?", text[:limit]).strip()

