"""The pure model: everything netpolicy decides, computed from the policy alone, with no I/O.

Both flows start here (see README "Layout"):

- policy -> ``compiler`` -> ``plan.KernelPlan`` -> ``netpolicy.kernel`` (sets in netfilter);
- policy -> ``hat.HatIndex`` -> ``netpolicy.smtp`` (every decision the kernel cannot make).

Modules: ``policy`` (the pydantic model of the file), ``loader`` and ``yamltree`` (text ->
policy, every problem as ``file:line``), ``references`` (names that must exist), ``effective``
(a policy's parameters after the listener's defaults), ``entries`` (sender-group entries),
``lists`` and ``geoip`` (``file:`` lists and ``country[...]`` entries as address intervals),
``fileid`` (whether a file changed, for their caches and serve's watcher),
``intervals`` (the address arithmetic both flows share), ``hat`` (the Host Access Table
engine), ``compiler`` and ``plan`` (the kernel's share), ``hat_import`` (appliance exports).
Nothing here opens a socket or touches the kernel; the files read are the policy, the lists it
names and its GeoIP database, all by the loader.

The names below load their module on first use (PEP 562): importing ``netpolicy.model.plan``
or reading ``DEFAULT_POLICY_PATH`` must not build the pydantic model, which is most of a
command's start-up (``netpolicy schema``, ``flush`` and ``import-hat`` need none of it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netpolicy.model.effective import EffectivePolicy, effective_policy, expand_text
    from netpolicy.model.loader import PolicyError, load_policy, parse_policy
    from netpolicy.model.references import PolicyProblem
    from netpolicy.model.policy import Listener, MailFlowPolicy, Policy, PolicyParams

DEFAULT_POLICY_PATH = "/etc/netpolicy/policy.yml"

_HOME = {
    "EffectivePolicy": "effective",
    "effective_policy": "effective",
    "expand_text": "effective",
    "PolicyProblem": "references",
    "PolicyError": "loader",
    "load_policy": "loader",
    "parse_policy": "loader",
    "Listener": "policy",
    "MailFlowPolicy": "policy",
    "Policy": "policy",
    "PolicyParams": "policy",
}

__all__ = [
    "DEFAULT_POLICY_PATH",
    "EffectivePolicy",
    "Listener",
    "MailFlowPolicy",
    "Policy",
    "PolicyError",
    "PolicyParams",
    "PolicyProblem",
    "effective_policy",
    "expand_text",
    "load_policy",
    "parse_policy",
]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
