"""The kernel layer: TCPREFUSE pushed into netfilter sets, one backend per netfilter flavour.

``select_backend`` picks one; everything else talks to the ``Backend`` interface
(netpolicy.kernel.base) and the values in netpolicy.kernel.values.
"""

from __future__ import annotations

from netpolicy.kernel.base import Backend, has_net_admin, require_net_admin
from netpolicy.kernel.values import (
    KernelDiff,
    KernelError,
    KernelStatus,
    LearnedRefusal,
    MissingCapability,
    Promotion,
)

BACKENDS = ("auto", "nftables", "iptables")

__all__ = [
    "BACKENDS", "Backend", "KernelDiff", "KernelError", "KernelStatus", "LearnedRefusal", "MissingCapability", "Promotion",
    "has_net_admin", "select_backend",
]


def select_backend(name: str = "auto", *, log_group: int | None = None) -> Backend:
    """The backend called ``name``; ``auto`` is nftables whenever nf_tables answers, else legacy
    iptables, and never iptables on a system whose ``iptables`` is the nf_tables variant.

    ``log_group`` turns on NFLOG logging of refusals (nftables only). Raises MissingCapability
    without CAP_NET_ADMIN, KernelError when the backend cannot work here.
    """
    from netpolicy.kernel.nftables import NftablesBackend

    require_net_admin()
    if name == "nftables":
        if not NftablesBackend.available():
            raise KernelError("nf_tables does not answer on this kernel")
        return NftablesBackend(log_group)
    if name not in ("auto", "iptables"):
        raise KernelError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "auto" and NftablesBackend.available():
        return NftablesBackend(log_group)
    from netpolicy.kernel.iptables import IptablesBackend, iptables_is_nft

    if name == "auto" and iptables_is_nft():
        raise KernelError("nf_tables does not answer, and iptables here is iptables-nft: no usable backend")
    if not IptablesBackend.available():
        raise KernelError("legacy iptables (ip_tables) or ipset is unavailable on this system")
    return IptablesBackend(log_group)
