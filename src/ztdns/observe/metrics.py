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

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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

    __slots__ = ("latency_counts", "latency_sum", "queries")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, str, str], int] = {}  # (transport, kind, rcode) → count
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
            for index, value in enumerate(shard.latency_counts):
                total.latency_counts[index] += value
            total.latency_sum += shard.latency_sum
        return total


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
        yield histogram_family(
            "ztdns_query_latency_seconds",
            "Time from query received to answer ready",
            LATENCY_BUCKETS,
            totals.latency_counts,
            totals.latency_sum,
        )
        for exporter in metrics.exporters:
            yield from exporter.collect()


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> None:
    """prometheus_client's HTTP server for ``registry`` on host:port, answering HEAD as GET without the body (its
    own app answers HEAD with 405, which monitoring probes and ``curl -I`` take for an error)."""
    server, _thread = start_http_server(port, host, registry)
    app = server.get_app()
    assert app is not None  # start_http_server made the server with its app
    server.set_app(_head_as_get(app))


def _head_as_get(app: WSGIApplication) -> WSGIApplication:
    def answer(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def keep(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable[[bytes], object]:
            started.append((status, headers))
            return lambda _data: None

        length = sum(len(chunk) for chunk in app({**environ, "REQUEST_METHOD": "GET"}, keep))
        status, headers = started[0]
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers = [*headers, ("Content-Length", str(length))]  # what GET would send
        start_response(status, headers)
        return []

    return answer
