"""``netpolicy serve``: the one package that sees both flows.

It loads a policy once, hands the kernel plan to ``netpolicy.kernel`` (reconciler, promotions,
NFLOG) and the HAT indexes to ``netpolicy.smtp`` (listeners), so both run one policy
generation. ``metrics`` exposes both sides to Prometheus; ``sdnotify`` speaks to systemd.
"""
