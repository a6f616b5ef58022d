"""The policy file: model, loading with line numbers, references between its parts."""

from netpolicy.policy.effective import EffectivePolicy, effective_policy, expand_text
from netpolicy.policy.loader import DEFAULT_POLICY_PATH, LocatedProblem, PolicyError, load_policy, parse_policy
from netpolicy.policy.model import Listener, MailFlowPolicy, Policy, PolicyParams

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
