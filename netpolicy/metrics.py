"""Prometheus metrics for ``serve`` (prometheus-client, on its own registry).

A registry per daemon keeps tests independent and exposes only netpolicy's series. Kernel
refusal counts come from the nftables named counters, read on each reconciler pass, so they
count SYNs the SMTP process never saw.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from netpolicy.policy.model import split_host_port


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "netpolicy_connections", "SMTP connections by HAT decision", ["listener", "sender_group", "behavior"], registry=r
        )
        self.kernel_refusals = Gauge(
            "netpolicy_kernel_refusals", "SYNs refused by the kernel (nftables counters)", ["listener"], registry=r
        )
        self.messages = Counter(
            "netpolicy_messages", "Messages by outcome (accepted, delivered, tempfailed)", ["listener", "outcome"], registry=r
        )
        self.drift_repairs = Counter("netpolicy_drift_repairs", "Kernel drift repairs", registry=r)
        self.promotions = Counter("netpolicy_promotions", "Hosts promoted into kernel refuse sets", ["listener"], registry=r)
        self.apply_seconds = Histogram(
            "netpolicy_apply_seconds", "Time to apply a kernel plan", registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.generation = Info("netpolicy_policy", "Policy generation in force", registry=r)

    def serve(self, address: str) -> None:
        """Expose /metrics on ``ADDR:PORT`` from a background thread."""
        host, port = split_host_port(address)
        start_http_server(port, addr=host, registry=self.registry)
