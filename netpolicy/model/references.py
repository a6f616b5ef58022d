"""Rules that relate one part of a policy file to another.

Checked after the types are valid; each problem carries the path of the offending node so the
loader can name its line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from netpolicy.model.entries import AllEntry, CountryEntry, ScoreEntry
from netpolicy.model.policy import Policy, PolicyParams

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyProblem:
    """One reason a policy file cannot be used: ``path`` names the node in the document, and
    the loader adds the ``file`` and ``line`` it was read from, which is how it is shown."""

    path: Path
    message: str
    file: str = ""
    line: int = 0

    @classmethod
    def at(cls, file: str, line: int, message: str) -> PolicyProblem:
        """A problem of the text itself, found before there is a document to point into."""
        return cls((), message, file, line)

    def located(self, file: str, line: int) -> PolicyProblem:
        return replace(self, file=file, line=line)

    def __str__(self) -> str:
        # One problem, one line: a CR or LF the file put into a message must not start another.
        message = self.message if self.message.isprintable() else self.message.encode("unicode_escape").decode()
        return f"{self.file}:{self.line}: {message}"


_CHECKED = frozenset({AllEntry, CountryEntry, ScoreEntry})


def reference_problems(policy: Policy) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    for name, entries in policy.sender_groups.items():
        if name == "ALL":
            problems.append(PolicyProblem(("sender_groups", name), "ALL is built in and cannot be defined"))
        for i, entry in enumerate(entries):
            if entry.__class__ not in _CHECKED:  # one set lookup per entry of a big group
                continue
            if isinstance(entry, AllEntry):
                problems.append(PolicyProblem(("sender_groups", name, i), "ALL is only valid as the HAT group ALL"))
            elif isinstance(entry, CountryEntry) and policy.geoip is None:
                problems.append(PolicyProblem(("sender_groups", name, i), f"{entry.text} needs a geoip block (the MaxMind DB countries are read from)"))
            elif isinstance(entry, ScoreEntry) and policy.reputation is None:
                problems.append(PolicyProblem(("sender_groups", name, i), f"{entry.text} needs a reputation block (the DNS lists the score is made of)"))
    seen_names: set[str] = set()
    seen_binds: set[tuple[str, int]] = set()
    for li, listener in enumerate(policy.listeners):
        base: Path = ("listeners", li)
        if listener.name in seen_names:
            problems.append(PolicyProblem((*base, "name"), f"listener name {listener.name!r} is used twice"))
        seen_names.add(listener.name)
        if (listener.address, listener.port) in seen_binds:
            problems.append(PolicyProblem((*base, "port"), f"{listener.address} port {listener.port} is used by two listeners"))
        seen_binds.add((listener.address, listener.port))
        problems += _hat_problems(policy, li)
        if listener.type == "private" and listener.rat is not None:
            problems.append(PolicyProblem((*base, "rat"), "a private listener has no RAT (it is meant for relaying)"))
        if listener.type == "public" and listener.rat is None:
            problems.append(PolicyProblem(base, "a public listener needs a RAT (end it with {recipient: ALL, action: reject})"))
        for ri, row in enumerate(listener.rat or []):
            if row.recipient == "ALL" and ri != len(listener.rat or []) - 1:
                problems.append(PolicyProblem((*base, "rat", ri), "RAT entry ALL must be the last one"))
        if (listener.tls_cert is None) != (listener.tls_key is None):
            problems.append(PolicyProblem(base, "tls_cert and tls_key go together"))
        if listener.tls_cert is None and _uses_tls(policy, li):
            problems.append(PolicyProblem(base, "a policy of this listener uses tls but the listener has no tls_cert/tls_key"))
    problems += _scanner_problems(policy)
    return problems


def _hat_problems(policy: Policy, li: int) -> list[PolicyProblem]:
    listener = policy.listeners[li]
    problems: list[PolicyProblem] = []
    last = len(listener.hat) - 1
    for hi, row in enumerate(listener.hat):
        path: Path = ("listeners", li, "hat", hi)
        if row.group != "ALL" and row.group not in policy.sender_groups:
            problems.append(PolicyProblem((*path, "group"), f"unknown sender group {row.group!r}"))
        if row.group == "ALL" and hi != last:
            problems.append(PolicyProblem((*path, "group"), "ALL must be the last HAT entry"))
        mfp = policy.mail_flow_policies.get(row.policy)
        if mfp is None:
            problems.append(PolicyProblem((*path, "policy"), f"unknown mail flow policy {row.policy!r}"))
        elif row.group == "ALL" and mfp.behavior == "continue":
            problems.append(PolicyProblem((*path, "policy"), "ALL cannot CONTINUE: nothing follows it"))
    if listener.hat[last].group != "ALL":
        problems.append(PolicyProblem(("listeners", li, "hat", last), "the HAT must end with the group ALL"))
    return problems


def _uses_tls(policy: Policy, li: int) -> bool:
    listener = policy.listeners[li]
    modes = {listener.defaults.tls}
    for row in listener.hat:
        mfp = policy.mail_flow_policies.get(row.policy)
        if mfp is not None:
            modes.add(mfp.tls)
    return bool(modes & {"preferred", "required"})


MESSAGE_CHECKS = ("spam_check", "virus_check", "spf", "dkim", "dmarc")


def _scanner_problems(policy: Policy) -> list[PolicyProblem]:
    """A check switched on (in a mail flow policy or a listener's defaults) needs the scanner
    block that says where rspamd is; the problem points at the first check of each place."""
    if policy.scanner is not None:
        return []
    places: list[tuple[Path, PolicyParams]] = [(("mail_flow_policies", name), mfp) for name, mfp in policy.mail_flow_policies.items()]
    places += [(("listeners", li, "defaults"), listener.defaults) for li, listener in enumerate(policy.listeners)]
    problems: list[PolicyProblem] = []
    for path, params in places:
        check = next((key for key in MESSAGE_CHECKS if getattr(params, key)), None)
        if check is not None:
            problems.append(PolicyProblem((*path, check), f"{check} needs a scanner block (where rspamd is)"))
    return problems
