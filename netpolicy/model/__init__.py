"""The pure model: everything netpolicy decides, computed from the policy alone, with no I/O.

Both flows start here (see README "Layout"):

- policy -> ``compiler`` -> ``plan.KernelPlan`` -> ``netpolicy.kernel`` (sets in netfilter);
- policy -> ``hat.HatIndex`` -> ``netpolicy.smtp`` (every decision the kernel cannot make).

Modules: ``policy`` (the pydantic model of the file), ``loader`` and ``yamltree`` (text ->
policy, every problem as ``file:line``), ``references`` (names that must exist), ``effective``
(a policy's parameters after the listener's defaults), ``entries`` (sender-group entries),
``intervals`` (the address arithmetic both flows share), ``hat`` (the Host Access Table
engine), ``compiler`` and ``plan`` (the kernel's share), ``hat_import`` (appliance exports).
Nothing here opens a socket or touches the kernel; the one file read is the policy's own.
"""

from netpolicy.model.effective import EffectivePolicy, effective_policy, expand_text
from netpolicy.model.loader import (
    DEFAULT_POLICY_PATH,
    LocatedProblem,
    PolicyError,
    load_policy,
    parse_policy,
)
from netpolicy.model.policy import Listener, MailFlowPolicy, Policy, PolicyParams

__all__ = [
    "DEFAULT_POLICY_PATH",
    "EffectivePolicy",
    "Listener",
    "LocatedProblem",
    "MailFlowPolicy",
    "Policy",
    "PolicyError",
    "PolicyParams",
    "effective_policy",
    "expand_text",
    "load_policy",
    "parse_policy",
]
