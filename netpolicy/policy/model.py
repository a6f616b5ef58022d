"""The policy file as pydantic models: the contract of SPEC.md section 2.

Types and single-field rules live here (pydantic reports them with a location path the loader
turns into a line number); rules that relate one part of the file to another (a HAT naming an
unknown group, ALL not last, a RAT on a private listener) live in ``references.py`` and are
checked once the types are valid.

Sender-group entries are parsed while the model is built, so a million-entry group is parsed
once and every consumer (HAT index, compiler) works on typed entries.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from netpolicy.policy.entries import Entry, EntryError, parse_entry

Behavior = Literal["accept", "reject", "tcprefuse", "relay", "continue"]
TlsMode = Literal["off", "preferred", "required"]
PositiveInt = Annotated[int, Field(gt=0)]
ReplyCode = Annotated[int, Field(ge=200, le=599)]
FailureCode = Annotated[int, Field(ge=400, le=599)]


def _parse_entry(value: object) -> Entry:
    if isinstance(value, (Entry.__args__)):  # type: ignore[attr-defined]  # already parsed
        return value  # type: ignore[return-value]
    try:
        return parse_entry(value)
    except EntryError as exc:
        raise ValueError(str(exc)) from None


SenderEntry = Annotated[
    Any,
    BeforeValidator(_parse_entry),
    PlainSerializer(lambda e: e.text, return_type=str),
    WithJsonSchema({"type": "string", "description": "address, partial address, range, CIDR, host name, .domain or dnslist[zone]"}),
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a policy must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyParams(StrictModel):
    """Mail flow policy parameters; every one optional ("Use Default")."""

    max_msgs_per_session: PositiveInt | None = None
    max_rcpts_per_msg: PositiveInt | None = None
    max_message_size: PositiveInt | None = Field(None, description="bytes")
    max_concurrency: PositiveInt | None = Field(None, description="connections per client address")
    max_rcpts_per_hour: PositiveInt | None = Field(None, description="per client address")
    rate_limit_code: FailureCode | None = None
    rate_limit_text: str | None = None
    smtp_banner_code: Annotated[int, Field(ge=200, le=299)] | None = None
    smtp_banner_text: str | None = None
    reject_banner_code: FailureCode | None = None
    reject_banner_text: str | None = None
    tls: TlsMode | None = None
    dhap_limit: PositiveInt | None = Field(None, description="invalid recipients per hour")
    dhap_code: FailureCode | None = None
    dhap_text: str | None = None
    promote_after: PositiveInt | None = Field(None, description="offences per hour before kernel refusal")
    promote_for: PositiveInt | None = Field(None, description="seconds a promoted host stays refused")


class MailFlowPolicy(PolicyParams):
    behavior: Behavior


class HatRow(StrictModel):
    group: str
    policy: str


class RatRow(StrictModel):
    recipient: str = Field(description="domain, .subdomain, user@domain, or ALL")
    action: Literal["accept", "reject"]


class Delivery(StrictModel):
    """Where accepted mail goes: a local Maildir, or the next hop before-queue."""

    maildir: str | None = None
    next_hop: str | None = Field(None, description="host:port; 250 only after the next hop accepted")
    timeout: PositiveInt = Field(60, description="seconds to wait for the next hop")

    @model_validator(mode="after")
    def _one_sink(self) -> "Delivery":
        if (self.maildir is None) == (self.next_hop is None):
            raise ValueError("delivery needs exactly one of maildir or next_hop")
        if self.next_hop is not None:
            split_host_port(self.next_hop)
        return self


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


class Listener(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,23}$", description="also names the kernel sets")
    type: Literal["public", "private"] = "public"
    address: str
    port: int = Field(25, ge=1, le=65535)
    hostname: str = "localhost"
    delayed_reject: bool = False
    kernel: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
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

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


class Policy(StrictModel):
    version: Literal[1]
    listeners: list[Listener] = Field(min_length=1)
    sender_groups: dict[str, list[SenderEntry]] = {}
    mail_flow_policies: dict[str, MailFlowPolicy]

    def listener(self, name: str) -> Listener:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)

    def generation(self) -> str:
        """A hash of the normalised policy: the same policy always has the same generation."""
        normal = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(normal.encode()).hexdigest()[:16]
