"""The agent's Prometheus metrics, on their own registry (the agent is a separate process from the server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        answers = Counter("ztdns_agent_answers", "Answers relayed by the stub", ["result"], registry=r)
        # Bound once: labels() takes a lock and a dict lookup, and these are counted per answer.
        self.opened = answers.labels("opened")
        self.relayed = answers.labels("relayed")
        self.servfail = answers.labels("servfail")
        self.added = Counter("ztdns_agent_addresses_added", "Addresses opened", registry=r)
        self.refreshed = Counter(
            "ztdns_agent_addresses_refreshed", "Open addresses whose lifetime was renewed", registry=r
        )
        self.expired = Counter("ztdns_agent_addresses_expired", "Grants that reached their expiry", registry=r)
        self.evicted = Counter("ztdns_agent_addresses_evicted", "Addresses closed by the per-name cap", registry=r)
        self.set_failures = Counter("ztdns_agent_set_update_failures", "Failed set transactions (SERVFAIL)", registry=r)
        self.upstream_failures = Counter(
            "ztdns_agent_upstream_failures", "Queries no protective server answered", registry=r
        )
        self.audit_drops = Counter("ztdns_agent_audit_drops", "Packets audit mode would have dropped", registry=r)
        self.table_restored = Counter(
            "ztdns_agent_table_restored", "Times the table was found deleted or altered by someone else", registry=r
        )
        self.live = Gauge("ztdns_agent_live_addresses", "Addresses currently open", registry=r)
        self.plumbing = Histogram(
            "ztdns_agent_plumbing_seconds",
            "Answer received from upstream → set updated → answer released",
            buckets=(0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=r,
        )
