"""The agent's Prometheus metrics, on their own registry (the agent is a separate process from the server).

Plain attributes bumped on the answer path and turned into Prometheus families only when scraped: a
prometheus_client ``Counter.inc`` takes a lock and costs about a microsecond, and an answer counts several
things. Only the event-loop thread writes them; the scrape thread only reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ztdns.observe.metrics import histogram_family

PLUMBING_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)

# Attribute → (metric name without _total, help). Answers are one family with a result label, below.
_COUNTERS = {
    "added": ("ztdns_agent_addresses_added", "Addresses opened"),
    "refreshed": ("ztdns_agent_addresses_refreshed", "Open addresses whose lifetime was renewed"),
    "expired": ("ztdns_agent_addresses_expired", "Grants that reached their expiry"),
    "evicted": ("ztdns_agent_addresses_evicted", "Addresses closed by the per-name cap or the total bound"),
    "shed": ("ztdns_agent_addresses_shed", "Grants dropped because all names held allow.max_addresses"),
    "set_failures": ("ztdns_agent_set_update_failures", "Failed set transactions (SERVFAIL)"),
    "upstream_failures": ("ztdns_agent_upstream_failures", "Queries no protective server answered"),
    "audit_drops": ("ztdns_agent_audit_drops", "Packets audit mode would have dropped"),
    "refused_clients": ("ztdns_agent_refused_clients", "Queries from sources outside stub.clients (not answered)"),
    "table_restored": ("ztdns_agent_table_restored", "Times the table was found deleted or altered by someone else"),
}
_RESULTS = ("opened", "relayed", "servfail")


class AgentMetrics(Collector):
    def __init__(self) -> None:
        # Answers relayed by the stub, by result.
        self.opened = self.relayed = self.servfail = 0
        self.added = self.refreshed = self.expired = self.evicted = self.shed = 0
        self.set_failures = self.upstream_failures = self.audit_drops = self.table_restored = 0
        self.refused_clients = 0
        self.live = 0
        self.plumbing_counts = [0] * (len(PLUMBING_BUCKETS) + 1)
        self.plumbing_sum = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe_plumbing(self, seconds: float) -> None:
        self.plumbing_counts[bisect.bisect_left(PLUMBING_BUCKETS, seconds)] += 1
        self.plumbing_sum += seconds

    def count_audit_drop(self) -> None:
        self.audit_drops += 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        answers = CounterMetricFamily("ztdns_agent_answers", "Answers relayed by the stub", labels=["result"])
        for result in _RESULTS:
            answers.add_metric([result], getattr(self, result))
        yield answers
        for attribute, (name, help_text) in _COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=getattr(self, attribute))
        yield GaugeMetricFamily("ztdns_agent_live_addresses", "Addresses currently open", value=self.live)
        yield histogram_family(
            "ztdns_agent_plumbing_seconds",
            "Answer received from upstream → set updated → answer released",
            PLUMBING_BUCKETS,
            list(self.plumbing_counts),
            self.plumbing_sum,
        )
