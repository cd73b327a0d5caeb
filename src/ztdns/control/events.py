"""Fleet-wide events on a JetStream stream: query-log records, detection verdicts and agent flow records.

Subjects are ``<stream>.<kind>.<node>`` (kind ``query``, ``verdict`` or ``flow``); each message is one JSON object
``{"kind", "node", "record"}``; for queries the record is the query log line (docs/querylog.md), made by the
same code, so what a sink's privacy mode removes from the log is not published either. The stream keeps events
for ``events_max_age`` seconds (JetStream's ``max_age``).

Publishing never blocks the caller: records wait in a bounded queue and a thread of its own (its own event loop
and NATS connection) sends them in batches with plain NATS publishes the stream captures; a full queue or an
unreachable NATS drops them and counts (``ztdns_events_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Iterator

from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config.control import ControlConfig
from ztdns.control import nats as ctl
from ztdns.observe.formats import Formatter
from ztdns.observe.sinks import TextSink

log = logging.getLogger(__name__)

KINDS = ("query", "verdict", "flow")
_INTERVAL = 0.05  # seconds between batches


async def ensure_stream(client: Client, name: str, max_age: float, replicas: int = 1) -> None:
    js = client.jetstream()
    try:
        await js.stream_info(name)
    except NotFoundError:
        config = StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=max_age,
            storage=StorageType.FILE,
            num_replicas=replicas,
        )
        await js.add_stream(config)


def envelope(kind: str, node: str, record: str) -> bytes:
    """One event as published: ``record`` is a JSON value already."""
    return f'{{"kind": "{kind}", "node": {json.dumps(node)}, "record": {record}}}'.encode()


class EventPublisher:
    """Publishes records of any kind from any thread; ``publish`` only enqueues."""

    def __init__(self, control: ControlConfig) -> None:
        if not control.events:
            raise ValueError("[control] events names no stream")
        self.control = control
        self.stream = control.events
        self.queue: queue.Queue[tuple[str, object]] = queue.Queue(control.events_queue)
        self.published = 0
        self.dropped = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ztdns-events", daemon=True)
        self._thread.start()

    def publish(self, kind: str, record: object) -> None:
        """``record``: a JSON-serialisable value, or ``Formatted`` JSON text (a query log record)."""
        try:
            self.queue.put_nowait((kind, record))
        except queue.Full:
            self.dropped += 1

    def _format(self, kind: str, record: object) -> bytes:
        text = record.text if isinstance(record, Formatted) else json.dumps(record)
        return envelope(kind, self.control.node, text)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        client: Client | None = None
        connecting: asyncio.Task[Client | None] | None = None
        while not self._closing.is_set():
            if client is None and connecting is None:  # in the background: batches keep being taken (and dropped)
                connecting = asyncio.get_running_loop().create_task(self._connect())
            if connecting is not None and connecting.done():
                client, connecting = connecting.result(), None
            batch = self._take()
            if batch and client is not None and client.is_connected:  # once connected, nats-py fails over itself
                try:
                    for kind, record in batch:
                        await client.publish(f"{self.stream}.{kind}.{self.control.node}", self._format(kind, record))
                    await client.flush(timeout=2)
                    self.published += len(batch)
                except Exception as exc:  # disconnected mid-batch, buffer full: these are lost, counted
                    self.dropped += len(batch)
                    log.warning("events: %d dropped: %s", len(batch), type(exc).__name__)
            elif batch:
                self.dropped += len(batch)
            await asyncio.sleep(_INTERVAL)
        if connecting is not None:
            connecting.cancel()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.drain()

    async def _connect(self) -> Client | None:
        client: Client | None = None
        try:
            client = await ctl.connect(self.control.servers, self.control.connect_timeout)
            await ensure_stream(client, self.stream, self.control.events_max_age)
            return client
        except Exception as exc:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            log.warning("events: cannot reach the stream %s: %s", self.stream, type(exc).__name__)
            await asyncio.sleep(1.0)
            return None

    def _take(self) -> list[tuple[str, object]]:
        batch: list[tuple[str, object]] = []
        with contextlib.suppress(queue.Empty):
            while len(batch) < 10_000:
                batch.append(self.queue.get_nowait())
        return batch

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        self._thread.join(timeout)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ztdns_events_published", "Fleet events published", value=self.published)
        yield CounterMetricFamily(
            "ztdns_events_dropped", "Fleet events dropped (queue full or NATS unreachable)", value=self.dropped
        )


class Formatted:
    """A record that is JSON text already (a query log line made by the observe formatter)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class JetStreamSink(TextSink):
    """The query log's records to the fleet stream: an observe sink fed like the others (its own bounded queue and
    thread), formatting with the query log's native format and handing the text to the publisher."""

    kind = "jetstream"

    def __init__(self, publisher: EventPublisher, limit: int) -> None:
        super().__init__("events", limit, Formatter("native", None, publisher.control.node))
        self.publisher = publisher
        self.start()

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        for kind, text in lines:
            self.publisher.publish("verdict" if kind == "detect" else kind, Formatted(text))

    def shutdown(self) -> None:
        self.publisher.close()

    def collect(self) -> Iterator[Metric]:
        return self.publisher.collect()
