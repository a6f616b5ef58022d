"""The policy file as pydantic models: the contract of SPEC.md section 2.

Types and single-field rules live here (pydantic reports them with a location path the loader
turns into a line number); rules that relate one part of the file to another (a HAT naming an
unknown group, ALL not last, a RAT on a private listener) live in ``references.py`` and are
checked once the types are valid.

Sender-group entries are parsed while the model is built (the loader hands them over already
parsed), so a million-entry group is parsed once and every consumer (HAT index, compiler) works on
typed entries.

Values that reach the wire or the kernel are checked here, not where they are used: reply texts,
names and the host name carry no control characters (a CR LF in a banner text goes out as
``220 hi\r\n250-x``: reply injection); integers are strict (``port: true`` is not port 1, and
``1.0e+29`` is not a size) and bounded; paths and the next hop are never empty.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from netpolicy.model.entries import (
    LISTING,
    AddressSetEntry,
    AnswerPattern,
    Entry,
    EntryError,
    parse_answer_pattern,
    parse_entry,
)
from netpolicy.model.store_url import check_store_url

if TYPE_CHECKING:
    from netpolicy.model.geoip import CountryTable

Behavior = Literal["accept", "reject", "tcprefuse", "relay", "continue"]
TlsMode = Literal["off", "preferred", "required"]
StrictBool = Annotated[bool, Field(strict=True)]  # `spam_check: 1` is a typo, not a switch
# Counts fit in 32 bits; anything larger is a typo, not a limit.
PositiveInt = Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]
FailureCode = Annotated[int, Field(strict=True, ge=400, le=599)]
# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; 400 leaves room for the code and for
# $Hostname / $RemoteIP expanded inside the text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control(value: str) -> str:
    if found := _CONTROL.search(value):
        raise ValueError(f"control character U+{ord(found.group()):04X} is not allowed (CR and LF would end the reply line)")
    return value


ReplyText = Annotated[str, StringConstraints(max_length=400), AfterValidator(_no_control)]
# Group and policy names reach the wire through $Group / $Policy, and the mail log.
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_control)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_no_control)]
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>[0-9]{1,5})$")


_ENTRY_TYPES: tuple[type, ...] = get_args(Entry)


def _parse_entry(value: object) -> Entry:
    if isinstance(value, _ENTRY_TYPES):  # already parsed
        return cast(Entry, value)
    try:
        return parse_entry(value)
    except EntryError as exc:
        raise ValueError(str(exc)) from None


def _entry_text(entry: Entry) -> str:
    """An entry as written; a list or a country set also by its content's digest, so the
    generation (a hash of the dump) changes when the file or the database does."""
    if isinstance(entry, AddressSetEntry):
        return f"{entry.text} (sha256 {entry.digest})"
    return entry.text


SenderEntry = Annotated[
    Any,
    BeforeValidator(_parse_entry),
    PlainSerializer(_entry_text, return_type=str),
    WithJsonSchema({"type": "string", "description": "address, partial address, range, CIDR, host name, .domain, dnslist[zone], score[a:b], country[CC,..] or file:PATH"}),
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a policy must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyParams(StrictModel):
    """Mail flow policy parameters; every one optional ("Use Default")."""

    max_msgs_per_session: PositiveInt | None = None
    max_rcpts_per_msg: PositiveInt | None = None
    max_message_size: Annotated[int, Field(strict=True, gt=0, le=2**31)] | None = Field(None, description="bytes, at most 2 GiB")
    max_concurrency: PositiveInt | None = Field(None, description="connections per client address")
    max_rcpts_per_hour: PositiveInt | None = Field(None, description="per client address")
    rate_limit_code: FailureCode | None = None
    rate_limit_text: ReplyText | None = None
    smtp_banner_code: Annotated[int, Field(strict=True, ge=200, le=299)] | None = None
    smtp_banner_text: ReplyText | None = None
    reject_banner_code: FailureCode | None = None
    reject_banner_text: ReplyText | None = None
    tls: TlsMode | None = None
    dhap_limit: PositiveInt | None = Field(None, description="invalid recipients per hour")
    dhap_code: FailureCode | None = None
    dhap_text: ReplyText | None = None
    promote_after: PositiveInt | None = Field(None, description="offences per hour before kernel refusal")
    # ipset's largest timeout (2,147,483 s, about 24.8 days) bounds both backends alike.
    promote_for: Annotated[int, Field(strict=True, gt=0, le=2_147_483)] | None = Field(
        None, description="seconds a promoted host stays refused")
    # Message checks (SPEC.md section 8), asked of the policy's scanner at the end of DATA.
    spam_check: StrictBool | None = Field(None, description="rspamd's spam rules")
    virus_check: StrictBool | None = Field(None, description="rspamd's antivirus module (clamd behind it)")
    spf: StrictBool | None = Field(None, description="verify SPF; results in Authentication-Results")
    dkim: StrictBool | None = Field(None, description="verify DKIM signatures; results in Authentication-Results")
    dmarc: StrictBool | None = Field(None, description="verify DMARC (runs SPF and DKIM for it); p=reject failures get 550")


class MailFlowPolicy(PolicyParams):
    behavior: Behavior


class HatRow(StrictModel):
    group: Name
    policy: Name


class RatRow(StrictModel):
    recipient: str = Field(description="domain, .subdomain, user@domain, or ALL")
    action: Literal["accept", "reject"]


class Delivery(StrictModel):
    """Where accepted mail goes: a local Maildir, or the next hop before-queue."""

    maildir: FilePath | None = None
    next_hop: str | None = Field(None, description="host:port; 250 only after the next hop accepted")
    timeout: PositiveInt = Field(60, description="seconds to wait for the next hop")
    forward_client: Literal["auto", "off"] = Field(
        "auto", description="auto: XCLIENT when the next hop offers it, else XFORWARD, else only the Received header")
    tls: Literal["none", "may", "encrypt"] = Field(
        "none", description="STARTTLS towards the next hop: may (when offered, unverified) or encrypt (required, verified)")
    tls_ca: FilePath | None = Field(
        None, description="CA file the next hop's certificate is verified against with tls: encrypt (default: the system store)")

    @field_validator("next_hop")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Delivery":
        if (self.maildir is None) == (self.next_hop is None):
            raise ValueError("delivery needs exactly one of maildir or next_hop")
        if self.tls_ca is not None and self.tls != "encrypt":
            raise ValueError("tls_ca is only used with tls: encrypt")
        return self


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``, the host a host name or an address literal."""
    match = _HOST_PORT.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    host = match["v6"] or match["host"]
    if not _is_host(host):
        raise ValueError(f"{text!r} is not host:port ({host!r} is neither a host name nor an address)")
    return host, int(match["port"])


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return _HOSTNAME.match(text) is not None


class Listener(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,23}$", description="also names the kernel sets")
    type: Literal["public", "private"] = "public"
    address: str
    port: int = Field(25, strict=True, ge=1, le=65535)
    hostname: str = Field("localhost", description="a host name (RFC 1123): it is sent in banners and replies")
    delayed_reject: bool = Field(False, strict=True)
    kernel: bool = Field(True, strict=True)
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    hat: list[HatRow] = Field(min_length=1)
    rat: list[RatRow] | None = None
    defaults: PolicyParams = PolicyParams()
    delivery: Delivery = Delivery(maildir="var/maildir")

    @field_validator("address")
    @classmethod
    def _literal_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 literal") from None

    @field_validator("hostname")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if _HOSTNAME.match(value) is None:
            raise ValueError(f"{value[:80]!r} is not a host name (letters, digits, hyphens and dots)")
        return value

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


_ZONE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


class ReputationSource(StrictModel):
    """One DNS list the score is made of: its weight counts when it lists the host."""

    dnslist: str = Field(description="DNS list zone, e.g. zen.spamhaus.org")
    answers: str | None = Field(None, description="answer pattern (postscreen syntax); default 127.0.0.0/8 outside 127.255.255.0/24")
    weight: Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)] = Field(
        description="added to the score when the list answers a listing: negative for block lists, positive for DNSWL-style lists")

    @field_validator("dnslist")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone = value.strip().lower().rstrip(".")
        if _ZONE.match(zone) is None:
            raise ValueError(f"{value[:80]!r} is not a DNS zone")
        return zone

    @field_validator("answers")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            parse_answer_pattern(value)  # ValueError names what is wrong
        return value

    @functools.cached_property
    def pattern(self) -> AnswerPattern:
        """Parsed once: every connection's score asks it of each source (20 us a connection
        with three patterned sources when parsed each time)."""
        return LISTING if self.answers is None else parse_answer_pattern(self.answers)


class Reputation(StrictModel):
    """How the host's score is computed (SPEC.md section 7); needed by ``score[...]`` entries."""

    timeout: Annotated[float, Field(gt=0.0, le=30.0, allow_inf_nan=False)] = Field(
        2.0, description="seconds for all lookups of one connection together")
    sources: list[ReputationSource] = Field(min_length=1)


class GeoIP(StrictModel):
    database: FilePath = Field(description="MaxMind DB file (GeoLite2-Country.mmdb or compatible); needed by country[...]")
    # What the loader read from the file: the decision line's country comes from the same
    # database as the policy's country[...] sets, even if the file changes before a reload.
    _table: CountryTable | None = PrivateAttr(None)

    @property
    def table(self) -> CountryTable | None:
        return self._table


class State(StrictModel):
    """Where limits and refusals shared by every worker and gateway live (SPEC.md section 10)."""

    redis: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^(redis|rediss|redis\+sentinel|unix)://"), AfterValidator(_no_control),
                     AfterValidator(check_store_url)] = Field(
        description="redis://host:6379/0, rediss:// for TLS, redis+sentinel://host:26379[,host:26379...]/master/0, unix:///path")
    prefix: Annotated[str, StringConstraints(max_length=64), AfterValidator(_no_control)] = Field(
        "netpolicy:", description="prefix of every key netpolicy writes")


_SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class Scanner(StrictModel):
    """rspamd, asked about each message whose policy wants a check (SPEC.md section 8)."""

    rspamd: str = Field(description="URL of rspamd's normal worker, http://host:port")
    timeout: Annotated[float, Field(strict=True, gt=0.0, le=600.0, allow_inf_nan=False)] = Field(
        20.0, description="seconds for one message's scan, sending included")
    on_error: Literal["tempfail", "accept"] = Field(
        "tempfail", description="scanner down, slow or answering garbage: tempfail (451 4.7.1) or accept (pass it on unscanned)")
    # rspamd's antivirus module names each rule's symbol in its own configuration (rspamd's
    # example rule: CLAM_VIRUS) and reports a scanner it could not ask as SYMBOL_FAIL; its
    # answer carries no group, so the symbols that mean "a virus" are named here.
    virus_symbols: list[str] = Field(["CLAM_VIRUS"], min_length=1, description="rspamd symbols that report a virus")

    @field_validator("rspamd")
    @classmethod
    def _url(cls, value: str) -> str:
        split_rspamd_url(value)
        return value

    @field_validator("virus_symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        for symbol in value:
            if _SYMBOL.match(symbol) is None:
                raise ValueError(f"{symbol[:80]!r} is not an rspamd symbol name (capitals, digits, underscores)")
        return value


def split_rspamd_url(text: str) -> tuple[str, int]:
    """``http://host:port`` (``[v6]`` in brackets; port 80 when left out) as (host, port)."""
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port or 80
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not an http://host:port URL") from None
    host = url.hostname or ""
    if url.scheme != "http" or not _is_host(host) or url.username or url.password or url.query or url.fragment \
            or url.path not in ("", "/"):
        raise ValueError(f"{text[:80]!r} is not an http://host:port URL (rspamd's normal worker)")
    return host, port


class Policy(StrictModel):
    version: Literal[1]
    listeners: list[Listener] = Field(min_length=1)
    sender_groups: dict[Name, list[SenderEntry]] = {}
    mail_flow_policies: dict[Name, MailFlowPolicy]
    reputation: Reputation | None = None
    geoip: GeoIP | None = None
    scanner: Scanner | None = None
    # ipset's largest timeout bounds it, as it bounds promote_for.
    state: State | None = None
    learn_refusals: Annotated[int, Field(strict=True, ge=0, le=2_147_483)] = Field(
        3600, description="seconds at most a TCPREFUSE resting on DNS answers is held in the kernel (0: off)")

    @field_validator("version", mode="before")
    @classmethod
    def _version_number(cls, value: object) -> object:
        if type(value) is not int:  # Literal[1] alone takes true and 1.0
            raise ValueError("must be the number 1")
        return value

    def listener(self, name: str) -> Listener:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)

    def generation(self) -> str:
        """A hash of the normalised policy: the same policy always has the same generation."""
        normal = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        if self.geoip is not None and self.geoip.table is not None:  # it names every decision's country
            normal += self.geoip.table.digest
        return hashlib.sha256(normal.encode()).hexdigest()[:16]
