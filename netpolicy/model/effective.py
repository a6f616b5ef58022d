"""A mail flow policy with every parameter resolved: policy, then listener defaults, then built-ins.

The SMTP layer reads only these resolved values, so "Use Default" is decided in one place.
Limits left unset everywhere are None: no limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from netpolicy.model.policy import Behavior, MailFlowPolicy, PolicyParams, TlsMode

BUILTIN_DEFAULTS: dict[str, object] = {
    "rate_limit_code": 452,
    "rate_limit_text": "Too many recipients received this hour",
    "smtp_banner_code": 220,
    "smtp_banner_text": "$Hostname ESMTP",
    "reject_banner_code": 554,
    "reject_banner_text": "$Hostname Access denied",
    "tls": "off",
    "dhap_code": 550,
    "dhap_text": "Too many invalid recipients",
    "promote_for": 3600,
    # Message checks are off unless asked for: a policy that asks for none never calls the scanner.
    "spam_check": False,
    "virus_check": False,
    "spf": False,
    "dkim": False,
    "dmarc": False,
}


@dataclass(frozen=True)
class EffectivePolicy:
    name: str
    behavior: Behavior
    max_msgs_per_session: int | None
    max_rcpts_per_msg: int | None
    max_message_size: int | None
    max_concurrency: int | None
    max_rcpts_per_hour: int | None
    rate_limit_code: int
    rate_limit_text: str
    smtp_banner_code: int
    smtp_banner_text: str
    reject_banner_code: int
    reject_banner_text: str
    tls: TlsMode
    dhap_limit: int | None
    dhap_code: int
    dhap_text: str
    promote_after: int | None
    promote_for: int
    spam_check: bool
    virus_check: bool
    spf: bool
    dkim: bool
    dmarc: bool

    @property
    def scans(self) -> bool:
        """Whether any message check is on (then each message goes to the scanner)."""
        return self.spam_check or self.virus_check or self.spf or self.dkim or self.dmarc


def effective_policy(name: str, policy: MailFlowPolicy, defaults: PolicyParams) -> EffectivePolicy:
    values: dict[str, object] = {}
    for key in PolicyParams.model_fields:
        value = getattr(policy, key)
        if value is None:
            value = getattr(defaults, key)
        if value is None:
            value = BUILTIN_DEFAULTS.get(key)
        values[key] = value
    return EffectivePolicy(name=name, behavior=policy.behavior, **values)  # type: ignore[arg-type]


def expand_text(text: str, *, hostname: str, remote_ip: str, group: str, policy: str) -> str:
    """Banner variables of SPEC.md: $Hostname, $RemoteIP, $Group, $Policy."""
    return (
        text.replace("$Hostname", hostname)
        .replace("$RemoteIP", remote_ip)
        .replace("$Group", group)
        .replace("$Policy", policy)
    )
