"""Metrics: plain counters updated on the hot path, turned into Prometheus families only when scraped.

The contract (one rule for every capability): an object that has metrics implements :class:`Exporter` —
``collect()`` returns its Prometheus families, read from its own plain counters at scrape time — and whoever
builds it registers it once with :meth:`Metrics.register`. Nothing else reaches into a capability to read its
counters. The query counts and latency histogram every answer feeds are ``Metrics.count`` (per-thread shards).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    pass

# Latency buckets in seconds: sub-millisecond resolution where cache hits live.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def histogram_family(
    name: str, help_text: str, bounds: tuple[float, ...], counts: list[int], total: float
) -> HistogramMetricFamily:
    """A histogram from plain per-bucket counts (``counts[i]``: observations in bucket ``i``, the last is +Inf)."""
    buckets = []
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=total)


class Exporter(Protocol):
    """What a capability with metrics implements (the same shape as a prometheus_client ``Collector``)."""

    def collect(self) -> Iterable[Metric]:
        """This object's metric families, read now (runs on the scrape thread: read, never block)."""
        ...


class Shard:
    """One thread's counters: only its own thread writes them, so no increment is ever lost."""

    __slots__ = ("answers", "latency_counts", "latency_sum", "queries")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, str, str], int] = {}  # (transport, kind, rcode) → count
        # The resolver's answers: (transport, Answered.metric_labels()) → count, in a one-element list (one lookup
        # per answer, not a lookup and a store); summed into queries when read.
        self.answers: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0


class Metrics:
    def __init__(self) -> None:
        self._local = threading.local()
        self._shards: list[Shard] = []
        self._shards_lock = threading.Lock()
        self.exporters: list[Exporter] = []

    def register(self, exporter: Exporter) -> None:
        """Export ``exporter.collect()`` with every scrape from now on."""
        self.exporters.append(exporter)

    def count(self, transport: str, kind: str, rcode: str, latency: float) -> None:
        try:
            shard: Shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        key = (transport, kind, rcode)
        queries = shard.queries
        queries[key] = queries.get(key, 0) + 1
        shard.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        shard.latency_sum += latency

    def count_answer(self, transport: str, labels: tuple[str, ...], latency: float, count: int = 1) -> None:
        """Count a resolver answer by all its labels (``Answered.metric_labels()``: one tuple per answer, shared
        by its replays, so the key costs what the (transport, kind, rcode) one did); ``count`` answers of the
        same labels and latency at once (a UDP lane's batch)."""
        try:
            shard: Shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        key = (transport, labels)
        counts = shard.answers.get(key)
        if counts is None:
            counts = shard.answers[key] = [0]
        counts[0] += count
        shard.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += count
        shard.latency_sum += latency * count

    def _new_shard(self) -> Shard:
        shard = Shard()
        self._local.shard = shard
        with self._shards_lock:
            self._shards.append(shard)
        return shard

    def totals(self) -> Shard:
        """The sum over all threads' shards (read at scrape time; a count in flight may be missed once)."""
        total = Shard()
        with self._shards_lock:
            shards = list(self._shards)
        for shard in shards:
            for key, value in list(shard.queries.items()):
                total.queries[key] = total.queries.get(key, 0) + value
            for (transport, labels), (value,) in list(shard.answers.items()):
                short = (transport, labels[0], labels[1])
                total.queries[short] = total.queries.get(short, 0) + value
                total.answers.setdefault((transport, labels), [0])[0] += value
            for index, value in enumerate(shard.latency_counts):
                total.latency_counts[index] += value
            total.latency_sum += shard.latency_sum
        return total


def _by_labels(totals: Shard) -> Iterator[Metric]:
    """Decisions by identity and policy (names from the config only) and DNSSEC results by EDE code."""
    decisions: dict[tuple[str, ...], int] = {}
    dnssec: dict[tuple[str, ...], int] = {}
    for (_, labels), (value,) in totals.answers.items():
        decision_key = labels[2:5]
        decisions[decision_key] = decisions.get(decision_key, 0) + value
        if labels[5] != "off":
            dnssec_key = labels[5:7]
            dnssec[dnssec_key] = dnssec.get(dnssec_key, 0) + value
    family = CounterMetricFamily(
        "ztdns_decisions",
        "Answers by identity, policy and decision (allow, deny, refuse, none)",
        labels=["identity", "policy", "decision"],
    )
    for key, value in sorted(decisions.items()):
        family.add_metric(list(key), value)
    yield family
    family = CounterMetricFamily(
        "ztdns_dnssec_answers",
        "Answers by DNSSEC result (secure, insecure, bogus) and, for bogus ones, the EDE code",
        labels=["result", "ede"],
    )
    for key, value in sorted(dnssec.items()):
        family.add_metric(list(key), value)
    yield family


class MetricsCollector(Collector):
    def __init__(self, metrics: Callable[[], Metrics]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics()
        totals = metrics.totals()
        queries = CounterMetricFamily(
            "ztdns_queries",
            "Queries answered, by transport, kind of answer and rcode",
            labels=["transport", "kind", "rcode"],
        )
        for (transport, kind, rcode), value in sorted(totals.queries.items()):
            queries.add_metric([transport, kind, rcode], value)
        yield queries
        yield from _by_labels(totals)
        yield histogram_family(
            "ztdns_query_latency_seconds",
            "Time from query received to answer ready",
            LATENCY_BUCKETS,
            totals.latency_counts,
            totals.latency_sum,
        )
        for exporter in metrics.exporters:
            yield from exporter.collect()


class ProcessInfo:
    """Build info (version, code and config digests of the last measurement), reloads and the config generation.

    ``digests`` returns (code digest, config digest) of the running process, or None before the first
    measurement (docs/attestation.md); the daemon counts reloads with :meth:`reloaded`.
    """

    def __init__(self, version: str, digests: Callable[[], tuple[str, str] | None]) -> None:
        self.version = version
        self.digests = digests
        self.reloads = {"success": 0, "failure": 0}
        self.generation = 1  # the config in service: 1 at start, +1 with each reload that was swapped in

    def reloaded(self, success: bool) -> None:
        self.reloads["success" if success else "failure"] += 1
        if success:
            self.generation += 1

    def collect(self) -> Iterator[Metric]:
        digests = self.digests() or ("", "")
        info = GaugeMetricFamily(
            "ztdns_build_info",
            "Always 1: the version, and the code and config digests measured (empty before the first measurement)",
            labels=["version", "code_digest", "config_digest"],
        )
        info.add_metric([self.version, *digests], 1)
        yield info
        reloads = CounterMetricFamily("ztdns_reloads", "Config reloads (SIGHUP), by result", labels=["result"])
        for result, count in sorted(self.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "ztdns_config_generation",
            "The config in service: 1 at start, one more with each reload",
            value=self.generation,
        )
