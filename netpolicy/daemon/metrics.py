"""Prometheus metrics for ``serve`` (prometheus-client, on the daemon's own registry).

The listeners and the reconciler already count what happens (``ListenerStats``, repair counts,
kernel counters); the collector reads those at scrape time instead of keeping a second set of
counters that could drift from the first. Kernel refusals come from the nftables named counters,
so they count SYNs the SMTP process never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from netpolicy.model.policy import split_host_port
from netpolicy.smtp.fds import FdWatch, open_fds, soft_limit
from netpolicy.smtp.scanner import ScanStats
from netpolicy.smtp.services import ListenerStats


@dataclass
class DaemonView:
    """What the collector reads; ``serve`` keeps it current."""

    generation: str = ""
    listeners: dict[str, ListenerStats] = field(default_factory=dict)
    kernel_refusals: dict[str, int] = field(default_factory=dict)  # listener -> packets
    drift_repairs: Callable[[], int] = lambda: 0
    task_failures: dict[str, int] = field(default_factory=dict)  # background loop -> restarts
    promotions: dict[str, int] = field(default_factory=dict)
    fds: FdWatch = field(default_factory=FdWatch)  # shared by every listener of the process
    dnslist_unexpected: dict[tuple[str, str], int] = field(default_factory=dict)  # (zone, answer) -> lookups
    scans: ScanStats = field(default_factory=ScanStats)  # message checks: verdicts and latency
    state_store_up: Callable[[], bool | None] = lambda: None  # None: no state store configured
    learned: Mapping[str, int] = field(default_factory=dict)  # listener -> refusals learned into the kernel
    learned_held: Callable[[], Mapping[str, int]] = dict  # listener -> learned refusals held now
    learn_skipped: Mapping[str, int] = field(default_factory=dict)  # listener -> not learned: cap reached
    shared_published: Mapping[str, int] = field(default_factory=dict)  # kind -> refusals published to the fleet
    shared_applied: Mapping[str, int] = field(default_factory=dict)  # kind -> refusals of other gateways applied
    worker_restarts: int | None = None  # None: serve runs no worker processes (``--workers 1``)


def _by_label(family: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
              labels: list[str], values: Mapping[str, int] | Mapping[tuple[str, str], int]) -> Metric:
    """One metric family with a sample per key of ``values`` (a label value, or a tuple of them),
    in key order so a scrape reads the same from one time to the next."""
    metric = family(name, documentation, labels=labels)
    for key, n in sorted(values.items()):
        label_values = [key] if isinstance(key, str) else list(key)
        metric.add_metric(label_values, n)
    return metric


class DaemonCollector(Collector):
    def __init__(self, view: DaemonView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        v = self.view
        info = InfoMetricFamily("netpolicy_policy", "Policy generation in force")
        info.add_metric([], {"generation": v.generation})
        yield info
        conns = CounterMetricFamily("netpolicy_connections", "SMTP connections by HAT decision", labels=["listener", "sender_group", "behavior"])
        msgs = CounterMetricFamily("netpolicy_messages", "Messages by outcome", labels=["listener", "outcome"])
        open_conns = GaugeMetricFamily("netpolicy_open_connections", "Open SMTP connections", labels=["listener"])
        pregreet = CounterMetricFamily("netpolicy_pregreet_refusals", "Clients refused for talking before the greeting", labels=["listener"])
        for name, stats in v.listeners.items():
            for (group, behavior), n in stats.connections.items():
                conns.add_metric([name, group, behavior], n)
            for outcome, n in (("accepted", stats.messages_accepted), ("delivered", stats.messages_delivered),
                               ("tempfailed", stats.messages_temp_failed), ("rejected", stats.messages_rejected)):
                msgs.add_metric([name, outcome], n)
            open_conns.add_metric([name], stats.open_connections)
            pregreet.add_metric([name], stats.pregreet)
        yield conns
        yield msgs
        yield open_conns
        yield pregreet
        yield GaugeMetricFamily("netpolicy_open_fds", "File descriptors the process has open", value=open_fds())
        yield GaugeMetricFamily("netpolicy_fd_limit", "RLIMIT_NOFILE soft limit", value=soft_limit())
        yield GaugeMetricFamily("netpolicy_fd_short", "1 while new connections are refused for want of file descriptors",
                                value=int(v.fds.short))
        yield CounterMetricFamily("netpolicy_fd_refusals", "Connections answered 421 for want of file descriptors",
                                  value=v.fds.refused)
        yield _by_label(CounterMetricFamily, "netpolicy_kernel_refusals", "SYNs refused by the kernel",
                        ["listener"], v.kernel_refusals)
        yield _by_label(CounterMetricFamily, "netpolicy_promotions", "Hosts promoted into kernel refuse sets",
                        ["listener"], v.promotions)
        yield _by_label(CounterMetricFamily, "netpolicy_learned_refusals",
                        "TCPREFUSE decisions on DNS answers learned into the kernel", ["listener"], v.learned)
        yield _by_label(GaugeMetricFamily, "netpolicy_learned_refusals_held", "Learned refusals the kernel holds now",
                        ["listener"], v.learned_held())
        yield _by_label(CounterMetricFamily, "netpolicy_learned_refusals_skipped",
                        "Refusals not learned because the listener held the most it may", ["listener"], v.learn_skipped)
        yield CounterMetricFamily("netpolicy_drift_repairs", "Kernel drift repairs", value=v.drift_repairs())
        yield _by_label(CounterMetricFamily, "netpolicy_task_failures",
                        "Background loops of serve that failed and were restarted", ["task"], v.task_failures)
        yield _by_label(CounterMetricFamily, "netpolicy_dnslist_unexpected_answers",
                        "DNS-list answers no pattern of the entry matched (not listings)", ["zone", "answer"],
                        v.dnslist_unexpected)
        yield _by_label(CounterMetricFamily, "netpolicy_scans", "Messages asked of the scanner, by verdict",
                        ["verdict"], v.scans.verdicts)
        yield HistogramMetricFamily("netpolicy_scan_seconds", "Time to scan one message (sending it included)",
                                    buckets=v.scans.cumulative(), sum_value=v.scans.latency_sum)
        yield _by_label(CounterMetricFamily, "netpolicy_shared_refusals_published",
                        "Promotions and learned refusals published to the other gateways", ["kind"], v.shared_published)
        yield _by_label(CounterMetricFamily, "netpolicy_shared_refusals_applied",
                        "Promotions and learned refusals of other gateways put into this kernel", ["kind"], v.shared_applied)
        if v.worker_restarts is not None:
            yield CounterMetricFamily("netpolicy_worker_restarts", "SMTP worker processes that ended and were started again",
                                      value=v.worker_restarts)
        store_up = v.state_store_up()
        if store_up is not None:
            yield GaugeMetricFamily("netpolicy_state_store_up", "1 while limits are shared through the state store, 0 while per process",
                                    value=int(store_up))


class Metrics:
    def __init__(self, view: DaemonView) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(view))
        self.apply_seconds = Histogram(
            "netpolicy_apply_seconds", "Time to apply a kernel plan", registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def serve(self, address: str) -> None:
        """Expose /metrics on ``ADDR:PORT`` from a background thread."""
        host, port = split_host_port(address)
        start_http_server(port, addr=host, registry=self.registry)
