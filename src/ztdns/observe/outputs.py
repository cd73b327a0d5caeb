"""The sinks of one config: the query log (``[log.query_log]``) and every ``[[log.sinks]]``, built together,
reopened together on SIGHUP, closed together, and exported as metrics (events written and dropped per sink)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns import __version__
from ztdns.config import Config, located
from ztdns.config.base import parse_hostport
from ztdns.config.log import SinkConfig
from ztdns.observe.dnstap import DnstapSink
from ztdns.observe.formats import Formatter
from ztdns.observe.privacy import Aggregate, Pseudonyms
from ztdns.observe.querylog import QueryLog
from ztdns.observe.recent import RecentSink
from ztdns.observe.sinks import Feed, QueueSink
from ztdns.observe.syslog import SyslogSink, tls_context

DNSTAP_PORT = 6000
SYSLOG_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}


class Outputs:
    def __init__(self, sinks: list[QueueSink], querylog: QueryLog | None) -> None:
        self.sinks = sinks
        self.querylog = querylog
        self.feed = Feed(sinks) if sinks else None

    def recent(self) -> RecentSink | None:
        """The first memory sink (the admin API's query log), if one is configured."""
        return next((sink for sink in self.sinks if isinstance(sink, RecentSink)), None)

    def reopen(self) -> None:
        for sink in self.sinks:
            sink.reopen()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "ztdns_querylog_dropped",
            "Query log lines dropped because the writer fell behind",
            value=self.querylog.dropped + self._feed_dropped() if self.querylog else 0,
        )
        written = CounterMetricFamily("ztdns_sink_events", "Events written by a sink", labels=["sink", "type"])
        dropped = CounterMetricFamily(
            "ztdns_sink_dropped", "Events a sink dropped (queue full or output failing)", labels=["sink", "type"]
        )
        connected = GaugeMetricFamily(
            "ztdns_sink_connected", "1 while a network sink is connected to its collector", labels=["sink", "type"]
        )
        for sink in self.sinks:
            labels = [sink.name, sink.kind]
            written.add_metric(labels, sink.written)
            dropped.add_metric(labels, sink.dropped + self._feed_dropped())
            if isinstance(sink, DnstapSink | SyslogSink):
                connected.add_metric(labels, 1.0 if sink.connected else 0.0)
        yield from (written, dropped, connected)
        for sink in self.sinks:
            yield from sink.collect()

    def _feed_dropped(self) -> int:
        """Events the feed dropped before any sink saw them (every sink missed them)."""
        return 0 if self.feed is None else self.feed.dropped


def instance_name(config: Config) -> str:
    return config.log.instance or socket.gethostname()


def make_outputs(config: Config, extra: Callable[[], list[QueueSink]] | None = None) -> Outputs:
    """Open every sink of ``config`` (and those ``extra`` makes: sinks of higher layers, such as the fleet's event
    stream); raises ConfigError naming the key of one that cannot be opened."""
    instance = instance_name(config)
    sinks: list[QueueSink] = []
    querylog = None
    try:
        output = config.log.query_log.output
        if output != "off":
            path = output if output == "stdout" else str(config.base_dir / output)
            try:
                querylog = QueryLog(path, config.log.query_log.queue, Formatter("native", None, instance))
            except OSError as exc:
                key = ("log", "query_log", "output")
                raise located(config, key, f"cannot open {path!r}: {exc.strerror or exc}") from None
            sinks.append(querylog)
        for index, sink in enumerate(config.log.sinks):
            sinks.append(_make_sink(config, index, sink, instance))
        if extra is not None:
            sinks += extra()
    except BaseException:
        for made in sinks:
            made.close()
        raise
    return Outputs(sinks, querylog)


def _make_sink(config: Config, index: int, sink: SinkConfig, instance: str) -> QueueSink:
    name = sink.name or f"{sink.type}{index}"
    pseudonyms = Pseudonyms(sink.ipcrypt, sink.key_rotation) if sink.privacy == "pseudonymised" else None
    aggregate = Aggregate(sink.k, sink.window) if sink.privacy == "aggregate" else None
    if sink.type == "memory":
        return RecentSink(name, sink.queue, sink.records, pseudonyms, aggregate)
    formatter = Formatter(sink.format, pseudonyms, instance)
    if sink.type == "json":
        path = sink.output if sink.output == "stdout" else str(config.base_dir / sink.output)
        try:
            return QueryLog(path, sink.queue, formatter, aggregate, sink.retention, name)
        except OSError as exc:
            key = ("log", "sinks", index, "output")
            raise located(config, key, f"cannot open {path!r}: {exc.strerror or exc}") from None
    if sink.type == "dnstap":
        unix = None if sink.socket is None else str(config.base_dir / sink.socket)
        tcp = None if sink.address is None else parse_hostport(sink.address, DNSTAP_PORT)
        version = f"ztdns {__version__}"
        return DnstapSink(name, sink.queue, instance, version, unix, tcp, pseudonyms, frozenset(sink.messages))
    assert sink.address is not None  # checked by SinkConfig
    host, port = parse_hostport(sink.address, SYSLOG_PORTS[sink.protocol])
    context = None
    if sink.protocol == "tls":
        ca = None if sink.ca is None else str(config.base_dir / sink.ca)
        try:
            context = tls_context(ca)
        except (OSError, ValueError) as exc:
            raise located(config, ("log", "sinks", index, "ca"), f"cannot load {ca!r}: {exc}") from None
    return SyslogSink(
        name,
        sink.queue,
        formatter,
        host,
        port,
        sink.protocol,
        sink.facility,
        instance,
        context,
        sink.server_name,
        aggregate,
    )
