"""Convert an appliance HAT export (AsyncOS ``hostaccess`` -> ``export``) into a netpolicy policy file.

The export is the text the appliance writes for one listener's Host Access Table::

    $TRUSTED
        ACCEPT {
            max_msgs_per_session = 5000
            spam_check = "off"
        }
    WHITELIST:
        203.0.113.25
        .partner.example
        $TRUSTED (My trusted senders)
    .spamdomain.com REJECT
    ALL $ACCEPTED

Policy blocks come first, then sender groups (``NAME:``, one entry per line, ended by the
``$POLICY (comment)`` line), inline rows (``ENTRY BEHAVIOUR [{...}]`` or ``ENTRY $POLICY``), and
``ALL`` last. The HAT order of the export is the order of the output.

The importer is deliberately strict: an operator migrates a gateway's access policy with it, so a
line it cannot translate is an error naming that line, never something quietly left out. What
the appliance has and netpolicy does not (anti-spam switches...) is carried into the YAML as
comments next to where it was, so the operator sees what changed.

SenderBase reputation entries (``sbrs[-10.0:-3.0]``, ``sbrs[none]``) become ``score[...]``
entries in the same place: dropping them would let through what the appliance blocked (its
default BLACKLIST is nothing but ``sbrs[-10.0:-3.0]``). netpolicy's score comes from DNS lists
the operator chooses, so the policy gets a ``reputation`` block of well-known lists marked EDIT,
and each range those lists cannot reach says so. Country entries (``country[us,cn]``) become
``country[US,CN]`` and need a country database, named in a ``geoip`` block marked EDIT; a
geolocation entry written in any other form is an error at its line like any unknown entry.

The message checks of a policy (``spam_check``, ``virus_check``, ``dkim_verification``,
``spf_profile`` -- the GUI's "SPF/SIDF Verification" -- and ``dmarc_verification``, each "on" or
"off") become ``spam_check``, ``virus_check``, ``dkim``, ``spf`` and ``dmarc``. netpolicy asks
rspamd for them, so a policy that turns one on gets a ``scanner`` block marked EDIT; the rest
of the appliance's SPF, DKIM and DMARC settings (profiles, conformance level, HELO test) are
rspamd's configuration, not the policy's, and stay comments.
The result is checked with :func:`parse_policy` before it is returned.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import yaml
from pydantic import ValidationError

from netpolicy.model.entries import AllEntry, CountryEntry, EntryError, ListFileEntry, ScoreEntry, parse_entry
from netpolicy.model.loader import PolicyError, parse_policy
from netpolicy.model.policy import MailFlowPolicy, PolicyParams, Reputation, ReputationSource
from netpolicy.model.references import MESSAGE_CHECKS
from netpolicy.model.reputation import reputation_score
from netpolicy.model.yamltree import tag_resolver

__all__ = ["DEFAULT_GEOIP_DATABASE", "DEFAULT_LISTENER_DEFAULTS", "DEFAULT_RSPAMD", "REPUTATION_SOURCES", "HatImportError", "import_hat"]

# The export does not carry the listener's "Default Policy Parameters" (what "Use Default"
# means on the appliance), so the imported listener gets the values of SPEC.md's example.
DEFAULT_LISTENER_DEFAULTS: Mapping[str, int] = {
    "max_msgs_per_session": 1000,
    "max_rcpts_per_msg": 1000,
    "max_message_size": 10485760,
    "max_concurrency": 50,
}

# The reputation block an imported policy starts from: SPEC.md's example lists, for the operator
# to replace or confirm (dnslist, answer pattern or None for the default listing range, weight).
REPUTATION_SOURCES: Sequence[tuple[str, str | None, float]] = (
    ("zen.spamhaus.org", "127.0.0.[2..11]", -6.0),
    ("bl.spamcop.net", None, -3.0),
    ("list.dnswl.org", "127.0.[0..255].[1..3]", 4.0),
)
# Where geoipupdate writes MaxMind's free country database on Debian.
DEFAULT_GEOIP_DATABASE = "/var/lib/GeoIP/GeoLite2-Country.mmdb"
# rspamd's normal worker as Debian's package starts it.
DEFAULT_RSPAMD = "http://127.0.0.1:11333"

_BEHAVIORS = {"ACCEPT": "accept", "REJECT": "reject", "TCPREFUSE": "tcprefuse", "RELAY": "relay", "CONTINUE": "continue"}

# Appliance parameter name -> netpolicy parameter name. Both spellings of the rate-limit reply
# are accepted: the GUI calls them max_rcpts_per_hour_code/_text, netpolicy rate_limit_code/_text.
_PARAMS = {
    "max_msgs_per_session": "max_msgs_per_session",
    "max_rcpts_per_msg": "max_rcpts_per_msg",
    "max_message_size": "max_message_size",
    "max_concurrency": "max_concurrency",
    "max_rcpts_per_hour": "max_rcpts_per_hour",
    "max_rcpts_per_hour_code": "rate_limit_code",
    "max_rcpts_per_hour_text": "rate_limit_text",
    "rate_limit_code": "rate_limit_code",
    "rate_limit_text": "rate_limit_text",
    "smtp_banner_code": "smtp_banner_code",
    "smtp_banner_text": "smtp_banner_text",
    "reject_banner_code": "reject_banner_code",
    "reject_banner_text": "reject_banner_text",
    "tls": "tls",
    "dhap_limit": "dhap_limit",
    "dhap_code": "dhap_code",
    "dhap_text": "dhap_text",
}
# The appliance's message-check switches ("on"/"off") -> netpolicy's parameters (SPEC.md section 8).
_CHECKS = {
    "spam_check": "spam_check",
    "virus_check": "virus_check",
    "dkim_verification": "dkim",
    "spf_profile": "spf",
    "dmarc_verification": "dmarc",
}
_SWITCH = {"on": True, "off": False}
# What an export's other sender-authentication settings mean here, in the comment that keeps them.
_CHECK_NOTES = {
    "spf_conformance_level": "netpolicy's spf is RFC 7208's check of the MAIL FROM identity, or of the HELO when "
                             "MAIL FROM is empty; Sender ID's PRA identity is not checked",
}
_TEXT_PARAMS = {"rate_limit_text", "smtp_banner_text", "reject_banner_text", "dhap_text"}
# Hourly limits where the appliance writes -1 (or 0) for "Unlimited".
_UNLIMITED_ZERO = {"max_rcpts_per_hour", "dhap_limit"}
# Appliance TLS values: "on" is netpolicy's "preferred". The *_verify variants also check the
# client certificate, which netpolicy does not do: imported without it, with a comment saying so.
_TLS = {"off": "off", "on": "preferred", "preferred": "preferred", "required": "required"}
_TLS_VERIFY = {"on_verify": "preferred", "preferred_verify": "preferred", "required_verify": "required"}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# The appliance's SenderBase reputation entries: sbrs[LOW:HIGH] or sbrs[none] (ipr[...] is the
# same score under its older IronPort name).
_REPUTATION_RE = re.compile(r"^(?:sbrs|ipr)\[(?P<range>[^\]]*)\]$", re.IGNORECASE)
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_GROUP_HEADER_RE = re.compile(rf"^({_NAME}):$")
_POLICY_REF_RE = re.compile(rf"^\$({_NAME})(?:\s+\((?P<comment>.*)\))?$")
_TOKEN_RE = re.compile(r'\s*(?:(?P<punct>[{}=])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s{}="]+))')
# Text made of these characters, not starting with an indicator nor ending in ":", is a plain
# scalar in block context; whether YAML would read it as a number, bool or null is asked of
# YAML's own resolver (a fraction of yaml.safe_load's cost, which matters for 1M-entry groups).
_PLAIN_SAFE_RE = re.compile(r"^[A-Za-z0-9_./](?:[A-Za-z0-9_./:\[\]-]*[A-Za-z0-9_./\]-])?$")
_RESOLVE = tag_resolver()
_STR_TAG = "tag:yaml.org,2002:str"


class HatImportError(ValueError):
    """An export line that cannot be translated; ``line`` is 1-based (0: the export as a whole)."""

    def __init__(self, line: int, message: str, source: str = "<export>") -> None:
        self.line = line
        self.message = message
        self.source = source
        super().__init__(f"{source}:{line}: {message}")


@dataclass
class _Value:
    text: str
    raw: str  # as written in the export, quotes included, for comments
    line: int


@dataclass
class _PolicyDef:
    name: str
    behavior: str
    line: int
    params: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # comments: what the export had and netpolicy cannot do


@dataclass
class _Row:
    group: str
    policy: str  # policy name (without $)
    line: int  # where the policy is named, for unknown-policy errors
    comment: str | None
    entries: list[str] = field(default_factory=list)
    # (position among entries, comment text): comments put above the entry at that position.
    notes: list[tuple[int, str]] = field(default_factory=list)


class _Lines:
    """The export's lines with a cursor; blank lines and ``#`` comments are not content."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._next = 0

    def next(self) -> tuple[int, str] | None:
        while self._next < len(self._lines):
            self._next += 1
            stripped = self._lines[self._next - 1].strip()
            if stripped and not stripped.startswith("#"):
                return self._next, stripped
        return None


class _Importer:
    """One pass over the export, collecting policies and HAT rows in the export's order."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = _Lines(text)
        self.policies: dict[str, _PolicyDef] = {}
        self.rows: list[_Row] = []
        self.group_names: set[str] = set()
        self.param_lines: dict[str, dict[str, int]] = {}  # policy -> netpolicy key -> export line
        self.all_seen = False
        self.score_lines: list[int] = []  # export lines of sbrs[...] entries
        self.country_lines: list[int] = []  # export lines of country[...] entries
        self.check_lines: list[int] = []  # export lines turning a message check on

    def fail(self, line: int, message: str) -> HatImportError:
        return HatImportError(line, message, self.source)

    # ---- top level -------------------------------------------------------------------------

    def run(self) -> None:
        while (item := self.lines.next()) is not None:
            line, text = item
            if self.all_seen:
                raise self.fail(line, "nothing may follow the ALL row (it is always the last HAT row)")
            first, _, rest = text.partition(" ")
            if text.startswith("$"):
                self._policy_definition(line, text)
            elif first == "ALL" or text == "ALL:":
                self._all_row(line, rest.strip())
            elif m := _GROUP_HEADER_RE.match(text):
                self._sender_group(line, m.group(1))
            else:
                self._inline_row(line, text)
        if not self.all_seen:
            raise self.fail(0, "the export has no ALL row (the HAT must end with ALL $POLICY)")
        for row in self.rows:
            if row.policy not in self.policies:
                raise self.fail(row.line, f"unknown mail flow policy ${row.policy}")
        all_policy = self.policies[self.rows[-1].policy]
        if all_policy.behavior == "continue":
            raise self.fail(self.rows[-1].line, "ALL cannot use a CONTINUE policy: nothing follows it")

    def _policy_definition(self, line: int, text: str) -> None:
        name_token, _, rest = text.partition(" ")
        name = name_token[1:]
        if not re.fullmatch(_NAME, name):
            raise self.fail(line, f"{name_token!r} is not a policy name")
        rest = rest.strip()
        if rest.startswith("("):
            raise self.fail(line, f"{text!r} names a policy outside a sender group (a group's $POLICY line ends it)")
        if name in self.policies:
            raise self.fail(line, f"mail flow policy ${name} is defined twice (first on line {self.policies[name].line})")
        if not rest:
            nxt = self.lines.next()
            if nxt is None:
                raise self.fail(line, f"policy ${name} has no behaviour (ACCEPT, REJECT, TCPREFUSE, RELAY or CONTINUE)")
            line, rest = nxt
        self.policies[name] = self._behaviour_and_block(name, line, rest)

    def _sender_group(self, line: int, name: str) -> None:
        self._claim_group(line, name)
        entries: list[str] = []
        notes: list[tuple[int, str]] = []
        while True:
            item = self.lines.next()
            if item is None:
                raise self.fail(line, f"sender group {name} ends without its $POLICY line")
            entry_line, text = item
            if _GROUP_HEADER_RE.match(text):
                raise self.fail(entry_line, f"sender group {name} (line {line}) ends without its $POLICY line")
            if text.startswith("$") or text.partition(" ")[0].upper() in _BEHAVIORS:
                policy, comment = self._policy_spec(name, entry_line, text)
                self.rows.append(_Row(name, policy, entry_line, comment, entries, notes))
                return
            for part in _split_entries(text):
                entry, note = self._entry(entry_line, part)
                if note:
                    notes.append((len(entries), note))
                entries.append(entry)

    def _all_row(self, line: int, rest: str) -> None:
        if not rest:
            nxt = self.lines.next()
            if nxt is None:
                raise self.fail(line, "ALL has no policy (write ALL $POLICY)")
            line, rest = nxt
        policy, comment = self._policy_spec("ALL", line, rest)
        self.rows.append(_Row("ALL", policy, line, comment))
        self.all_seen = True

    def _inline_row(self, line: int, text: str) -> None:
        entry_text, _, rest = text.partition(" ")
        rest = rest.strip()
        if not rest or not (rest.startswith("$") or rest.partition(" ")[0].upper() in _BEHAVIORS):
            raise self.fail(
                line,
                f"cannot read {text!r}: expected a policy ($NAME BEHAVIOUR {{...}}), a sender group (NAME:), "
                "an inline row (ENTRY BEHAVIOUR or ENTRY $POLICY) or ALL $POLICY",
            )
        entry, note = self._entry(line, entry_text)
        group = self._unique(self.group_names, "INLINE_" + (re.sub(r"[^A-Za-z0-9]+", "_", entry).strip("_").upper() or "ROW"))
        self._claim_group(line, group)
        policy, comment = self._policy_spec(group, line, rest)
        self.rows.append(_Row(group, policy, line, comment or f"inline row {text!r}", [entry], [(0, note)] if note else []))

    # ---- pieces ----------------------------------------------------------------------------

    def _claim_group(self, line: int, name: str) -> None:
        if name in self.group_names:
            raise self.fail(line, f"sender group {name} appears twice")
        self.group_names.add(name)

    @staticmethod
    def _unique(taken: Mapping[str, object] | set[str], base: str) -> str:
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        return name

    def _entry(self, line: int, text: str) -> tuple[str, str | None]:
        """The netpolicy entry for one export entry, and a comment to put above it (or None)."""
        if m := _REPUTATION_RE.match(text):
            return self._score(line, text, m["range"])
        try:
            parsed = parse_entry(text)
        except EntryError as exc:
            raise self.fail(line, str(exc)) from None
        if isinstance(parsed, AllEntry):
            raise self.fail(line, "ALL is only valid as the last HAT row (ALL $POLICY), not as a sender-group entry")
        if isinstance(parsed, ScoreEntry):
            raise self.fail(line, f"{text!r}: the appliance writes reputation ranges as sbrs[LOW:HIGH] or sbrs[none]")
        if isinstance(parsed, ListFileEntry):
            raise self.fail(line, f"{text!r}: file: lists are netpolicy's own entries, not an appliance's")
        if isinstance(parsed, CountryEntry):
            self.country_lines.append(line)
            return f"country[{','.join(parsed.codes)}]", None
        return parsed.text, None

    def _score(self, line: int, text: str, body: str) -> tuple[str, str | None]:
        """``sbrs[LOW:HIGH]`` -> ``score[LOW:HIGH]``, ``sbrs[none]`` -> ``score[none]``, with a
        comment where netpolicy's score means something else or cannot reach the range."""
        body = "".join(body.split())
        try:
            entry = parse_entry("score[none]" if body.lower() == "none" else f"score[{body}]")
        except EntryError:
            raise self.fail(line, f"{text!r} is not sbrs[LOW:HIGH] (from -10 to 10, upwards) or sbrs[none]") from None
        assert isinstance(entry, ScoreEntry)
        self.score_lines.append(line)
        if entry.low is None or entry.high is None:
            return entry.text, (
                f"{text} (line {line}): on the appliance, SenderBase knew nothing of the host; "
                "score[none] matches when every reputation source failed or timed out"
            )
        if not any(entry.low <= score <= entry.high for score in _REACHABLE_SCORES):
            low, high = min(_REACHABLE_SCORES), max(_REACHABLE_SCORES)
            return entry.text, f"EDIT: {text} (line {line}): the sources below only add up to {low}..{high}: change their weights"
        return entry.text, None

    def _policy_spec(self, row_name: str, line: int, text: str) -> tuple[str, str | None]:
        """``$NAME (comment)`` names a policy; ``BEHAVIOUR [{...}]`` defines one for this row."""
        if text.startswith("$"):
            m = _POLICY_REF_RE.match(text)
            if not m:
                raise self.fail(line, f"cannot read policy line {text!r} (expected $POLICY or $POLICY (comment))")
            return m.group(1), m.group("comment")
        name = self._unique(self.policies, row_name)
        self.policies[name] = self._behaviour_and_block(name, line, text)
        return name, None

    def _behaviour_and_block(self, name: str, line: int, text: str) -> _PolicyDef:
        word, _, rest = text.partition(" ")
        behavior = _BEHAVIORS.get(word.upper())
        if behavior is None:
            raise self.fail(line, f"{word!r} is not a behaviour (ACCEPT, REJECT, TCPREFUSE, RELAY or CONTINUE)")
        policy = _PolicyDef(name, behavior, line)
        rest = rest.strip()
        if rest:
            if not rest.startswith("{"):
                raise self.fail(line, f"expected {{ parameters }} after {word}, found {rest!r}")
            self._block(policy, line, rest)
        self._validate(policy)
        return policy

    def _block(self, policy: _PolicyDef, line: int, text: str) -> None:
        """Parse ``{ key = value ... }``, which may span lines, into the policy's parameters."""
        start = line
        tokens = self._tokens(line, text)
        assert tokens and tokens[0][0] == "{"
        tokens.pop(0)
        seen: dict[str, int] = {}
        while True:
            while not tokens:
                item = self.lines.next()
                if item is None:
                    raise self.fail(start, f"the {{ parameters }} block of ${policy.name} is not closed")
                line, more = item
                tokens = self._tokens(line, more)
            kind, key_text, key_line = tokens.pop(0)
            if kind == "}":
                if tokens:
                    raise self.fail(key_line, f"unexpected {tokens[0][1]!r} after the closing }}")
                return
            if kind != "bare" or len(tokens) < 2 or tokens[0][0] != "=" or tokens[1][0] not in ("bare", "quoted"):
                raise self.fail(key_line, f"expected key = value in the parameters of ${policy.name}, found {key_text!r}")
            tokens.pop(0)
            value_kind, value_raw, _ = tokens.pop(0)
            if key_text in seen:
                raise self.fail(key_line, f"parameter {key_text} is given twice (first on line {seen[key_text]})")
            seen[key_text] = key_line
            text_value = _unquote(value_raw) if value_kind == "quoted" else value_raw
            self._param(policy, key_text, _Value(text_value, value_raw, key_line))

    def _tokens(self, line: int, text: str) -> list[tuple[str, str, int]]:
        """``(kind, text, line)`` tokens; kind is ``{``, ``}``, ``=``, ``quoted`` or ``bare``."""
        tokens: list[tuple[str, str, int]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                raise self.fail(line, f"cannot read {text[pos:].strip()!r} (an unterminated quoted string?)")
            if m.group("punct"):
                tokens.append((m.group("punct"), m.group("punct"), line))
            elif m.group("quoted") is not None:
                tokens.append(("quoted", m.group(0).strip(), line))
            else:
                tokens.append(("bare", m.group("bare"), line))
            pos = m.end()
        return tokens

    def _param(self, policy: _PolicyDef, key: str, value: _Value) -> None:
        target = _PARAMS.get(key) or _CHECKS.get(key)
        if target is None:
            meaning = _CHECK_NOTES.get(key, "no netpolicy equivalent")
            policy.notes.append(f"{key} = {value.raw} (line {value.line}: {meaning}; not imported)")
            return
        if value.text.strip().lower() in ("default", "use default"):
            return  # "Use Default": unset here means the listener's defaults, as on the appliance
        if key in _CHECKS:
            switch = _SWITCH.get(value.text.strip().lower())
            if switch is None:
                raise self.fail(value.line, f"{key} = {value.raw}: expected on or off (or default)")
            policy.params[target] = switch
            self.param_lines.setdefault(policy.name, {})[target] = value.line
            if switch:
                self.check_lines.append(value.line)
            return
        policy.params[target] = self._convert(target, value, policy)
        self.param_lines.setdefault(policy.name, {})[target] = value.line

    def _convert(self, target: str, value: _Value, policy: _PolicyDef) -> object:
        text = value.text.strip()
        if target in _TEXT_PARAMS:
            return value.text
        if target == "tls":
            mode = text.lower()
            if mode in _TLS:
                return _TLS[mode]
            if mode in _TLS_VERIFY:
                policy.notes.append(
                    f"tls = {value.raw} (line {value.line}: netpolicy does not verify client certificates; "
                    f"imported as tls: {_TLS_VERIFY[mode]})"
                )
                return _TLS_VERIFY[mode]
            raise self.fail(value.line, f"tls = {value.raw}: expected off, on, required (or default)")
        number = _size(text) if target == "max_message_size" else _int(text)
        if number is None:
            unit = " (a size may end in k, M or G)" if target == "max_message_size" else ""
            raise self.fail(value.line, f"{target} = {value.raw}: not a whole number{unit}")
        if number == -1 or (number == 0 and target in _UNLIMITED_ZERO):
            return _UNLIMITED
        return number

    def _validate(self, policy: _PolicyDef) -> None:
        """Check the values now, so a bad one is reported at its export line."""
        values = {k: v for k, v in policy.params.items() if v is not _UNLIMITED}
        try:
            MailFlowPolicy.model_validate({"behavior": policy.behavior, **values})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            line = self.param_lines.get(policy.name, {}).get(key, policy.line)
            raise self.fail(line, f"${policy.name}: {key}: {err['msg'].removeprefix('Value error, ')}") from None


class _Unlimited:
    """The appliance's "Unlimited": netpolicy leaves the key unset (no limit) and says so."""

    def __repr__(self) -> str:
        return "unlimited"


_UNLIMITED = _Unlimited()


def _placeholder_reputation() -> Reputation:
    return Reputation(sources=[ReputationSource(dnslist=zone, answers=answers, weight=weight)
                               for zone, answers, weight in REPUTATION_SOURCES])


def _reachable_scores() -> frozenset[float]:
    """Every score the imported reputation block can give: one for each set of listing sources."""
    reputation = _placeholder_reputation()
    zones = [source.dnslist for source in reputation.sources]
    scores: set[float] = set()
    for n in range(len(zones) + 1):
        for listing in itertools.combinations(zones, n):
            listed = set(listing)
            score = reputation_score(reputation, lambda zone, _pattern: zone in listed)  # noqa: B023 (called here)
            if score is not None:
                scores.add(score)
    return frozenset(scores)


_REACHABLE_SCORES = _reachable_scores()


def _split_entries(text: str) -> list[str]:
    """A line's entries: separated by commas, except inside brackets (``country[us, cn]``).
    Lines without a bracket, nearly all of a big export, are split directly: the bracket-aware
    regex costs 270 ms per 100k lines against 55 ms."""
    parts = re.findall(r"(?:\[[^\]]*\]?|[^,\[])+", text) if "[" in text else text.split(",")
    return [part.strip() for part in parts if part.strip()]  # an unclosed [ takes the rest: one bad entry


def _unquote(raw: str) -> str:
    return re.sub(r'\\(["\\])', r"\1", raw[1:-1])


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _size(text: str) -> int | None:
    m = re.fullmatch(r"(-?\d+)\s*([kKmMgG]?)[bB]?", text)
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()] if m else None


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar that reads back as exactly this string."""
    if _PLAIN_SAFE_RE.match(text) and _RESOLVE(yaml.ScalarNode, text, (True, False)) == _STR_TAG:
        return text
    return json.dumps(text)


def import_hat(
    text: str,
    source: str = "<export>",
    listener_name: str = "IncomingMail",
    *,
    listener_type: Literal["public", "private"] = "public",
    address: str = "127.0.0.1",
    port: int = 2525,
    hostname: str = "localhost",
    kernel: bool = True,
    maildir: str = "var/maildir",
    next_hop: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    defaults: Mapping[str, object] | None = None,
    geoip_database: str | None = None,
) -> str:
    """Translate the text of an appliance HAT export into a commented netpolicy policy file.

    ``source`` names the export in error messages. The listener fields describe the one listener
    the export becomes (an export is one listener's HAT). ``defaults`` are the listener's "Use
    Default" values; the export does not carry them, so :data:`DEFAULT_LISTENER_DEFAULTS` is used
    when not given. ``geoip_database`` is the country database ``country[...]`` entries are read
    from (:data:`DEFAULT_GEOIP_DATABASE` when not given); it must exist when the export has any,
    since the policy does not validate without it.
    Raises :class:`HatImportError` naming the export line of anything it cannot translate, and
    ``ValueError`` when the listener arguments make an invalid policy.
    """
    importer = _Importer(text, source)
    importer.run()
    geoip_database = geoip_database or DEFAULT_GEOIP_DATABASE
    if importer.country_lines and not os.path.isfile(geoip_database):
        raise ValueError(
            f"{source}:{importer.country_lines[0]}: country entries need a country database in MaxMind DB format, "
            f"and {geoip_database} is not a file: give its path (import-hat --geoip-database PATH; README says where to get one)"
        )
    listener_defaults = dict(DEFAULT_LISTENER_DEFAULTS if defaults is None else defaults)
    try:
        PolicyParams.model_validate(listener_defaults)
    except ValidationError as exc:
        raise ValueError(f"listener defaults: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    for policy in importer.policies.values():
        for key, value in policy.params.items():
            if value is _UNLIMITED and key in listener_defaults:
                raise importer.fail(
                    importer.param_lines[policy.name][key],
                    f"${policy.name}: {key} is unlimited, but the listener defaults limit it to {listener_defaults[key]} "
                    "and netpolicy cannot override a default with 'no limit' (import with defaults that leave it out)",
                )
    # A policy with TLS needs a certificate on the listener: without one the output would not
    # validate, and turning TLS off would weaken the imported policy. So: a path to fill in.
    uses_tls = any(p.params.get("tls") in ("preferred", "required") for p in importer.policies.values())
    tls_placeholder = uses_tls and tls_cert is None
    if uses_tls:
        tls_cert = tls_cert or f"/etc/netpolicy/{listener_name}.pem"
        tls_key = tls_key or f"/etc/netpolicy/{listener_name}.key"
    out = _render(
        importer,
        listener_name=listener_name,
        listener_type=listener_type,
        address=address,
        port=port,
        hostname=hostname,
        kernel=kernel,
        maildir=maildir,
        next_hop=next_hop,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_placeholder=tls_placeholder,
        defaults=listener_defaults,
        geoip_database=os.path.abspath(geoip_database),
        scans=bool(importer.check_lines) or any(listener_defaults.get(key) is True for key in MESSAGE_CHECKS),
    )
    try:
        parse_policy(out, f"{source} (imported)")
    except PolicyError as exc:
        raise ValueError(f"the imported policy is not valid with these listener settings:\n{exc}") from None
    return out


def _render(
    importer: _Importer,
    *,
    listener_name: str,
    listener_type: str,
    address: str,
    port: int,
    hostname: str,
    kernel: bool,
    maildir: str,
    next_hop: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_placeholder: bool,
    defaults: Mapping[str, object],
    geoip_database: str,
    scans: bool,
) -> str:
    out: list[str] = [
        f"# Imported from the appliance HAT export {importer.source} by `netpolicy import-hat`.",
        "# Review the lines marked EDIT; comments name what the export had and netpolicy does not.",
        "version: 1",
        "listeners:",
        f"  - name: {_scalar(listener_name)}",
        f"    type: {listener_type}",
        f"    address: {_scalar(address)}",
        f"    port: {int(port)}",
        f"    hostname: {_scalar(hostname)}   # EDIT: the name this gateway announces in its banner",
        f"    kernel: {'true' if kernel else 'false'}   # TCPREFUSE rows are refused in netfilter",
    ]
    if tls_cert is not None:
        note = "   # EDIT: the export's policies use TLS; put this listener's certificate here" if tls_placeholder else ""
        out.append(f"    tls_cert: {_scalar(tls_cert)}{note}")
    if tls_key is not None:
        out.append(f"    tls_key: {_scalar(tls_key)}")
    out.append("    hat:   # the export's order: top to bottom, first match wins, ALL last")
    for row in importer.rows:
        line = f"      - {{group: {_scalar(row.group)}, policy: {_scalar(row.policy)}}}"
        out.append(f"{line}   # {_one_line(row.comment)}" if row.comment else line)
    if listener_type == "public":
        out += [
            "    rat:",
            "      # EDIT: the export has no Recipient Access Table. Add the domains this gateway",
            "      # accepts mail for above the last row, for example:",
            "      #   - {recipient: example.com, action: accept}",
            "      - {recipient: ALL, action: reject}",
        ]
    out.append("    # The export does not carry the listener's Default Policy Parameters (\"Use Default\").")
    if defaults:
        out.append("    # EDIT: set these to the appliance listener's values.")
        out.append("    defaults:")
        out += [f"      {key}: {_value(value)}" for key, value in defaults.items()]
    else:
        out.append("    # EDIT: add a defaults: block with the appliance listener's values.")
    out.append("    delivery:")
    out.append(f"      next_hop: {_scalar(next_hop)}" if next_hop else f"      maildir: {_scalar(maildir)}")

    groups = [row for row in importer.rows if row.group != "ALL"]
    out.append("sender_groups:" if groups else "sender_groups: {}")
    for row in groups:
        key = _scalar(row.group)
        if not row.entries:
            out.append(f"  {key}: []")
            continue
        out.append(f"  {key}:")
        notes: dict[int, list[str]] = {}
        for position, text in row.notes:
            notes.setdefault(position, []).append(text)
        for i, entry in enumerate(row.entries):
            out += [f"    # {text}" for text in notes.get(i, [])]
            out.append(f"    - {_scalar(entry)}")

    out.append("mail_flow_policies:")
    for policy in importer.policies.values():
        out.append(f"  {_scalar(policy.name)}:")
        out.append(f"    behavior: {policy.behavior}")
        unlimited: list[str] = []
        for key, value in policy.params.items():
            if value is _UNLIMITED:
                unlimited.append(key)
            else:
                out.append(f"    {key}: {_value(value)}")
        out += [f"    # {key}: unlimited in the export (left unset: no limit)" for key in unlimited]
        if policy.notes:
            out.append("    # from the export, not imported:")
            out += [f"    #   {_one_line(note)}" for note in policy.notes]
    if scans:
        out += _scanner_block(importer.check_lines)
    if importer.score_lines:
        out += _reputation_block(importer.score_lines)
    if importer.country_lines:
        out += [
            f"# EDIT: the country entries (export line {importer.country_lines[0]} and on) are looked up in this",
            "# database: MaxMind's GeoLite2-Country.mmdb (free account, kept fresh by geoipupdate) or DB-IP's",
            "# free IP-to-Country Lite mmdb. A stale database puts addresses in the wrong country.",
            "geoip:",
            f"  database: {_scalar(geoip_database)}",
        ]
    return "\n".join(out) + "\n"


def _scanner_block(check_lines: list[int]) -> list[str]:
    """The ``scanner`` block the message checks need, marked EDIT: where rspamd listens."""
    where = f" (export line {check_lines[0]} and on)" if check_lines else " (the listener defaults)"
    return [
        f"# EDIT: the export's policies check messages{where}: netpolicy asks rspamd at the end of",
        "# DATA, with ClamAV's clamd behind rspamd's antivirus module for virus_check. Point this at",
        "# rspamd's normal worker. on_error: tempfail answers 451 while rspamd cannot be asked, so no",
        "# message passes unchecked; accept passes messages on unscanned instead.",
        "scanner:",
        f"  rspamd: {DEFAULT_RSPAMD}   # EDIT",
        "  timeout: 20   # seconds per message",
        "  on_error: tempfail   # EDIT",
    ]


def _reputation_block(score_lines: list[int]) -> list[str]:
    """The ``reputation`` block for the score entries: lists to choose, marked EDIT."""
    out = [
        f"# EDIT: the appliance scored hosts with SenderBase (sbrs[...], export line {score_lines[0]} and on);",
        "# netpolicy scores them from DNS lists: the sum of the weights of the lists that list the host,",
        "# clamped to -10..10, 0 when none does, none when every lookup failed. These lists are a",
        "# starting point: choose your own and check each one's terms of use before you query it",
        "# (Spamhaus's free use is for low volumes and refuses queries through public resolvers; SpamCop",
        "# and DNSWL have their own). Then check each group's score range against these weights.",
        "reputation:",
        "  timeout: 2.0   # seconds for all lookups of one connection together",
        "  sources:",
    ]
    for zone, answers, weight in REPUTATION_SOURCES:
        pattern = f", answers: {json.dumps(answers)}" if answers is not None else ""
        out.append(f"    - {{dnslist: {zone}{pattern}, weight: {weight:g}}}   # EDIT")
    return out


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def _one_line(text: str) -> str:
    return " ".join(text.split())
