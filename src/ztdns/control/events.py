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
from ztdns.observe.events import QueryEvent
from ztdns.observe.querylog import Clock, line

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
        self._clock = Clock()
        self._thread = threading.Thread(target=self._run, name="ztdns-events", daemon=True)
        self._thread.start()

    def publish(self, kind: str, record: object) -> None:
        """``record``: a JSON-serialisable value, or a QueryEvent (formatted on the publisher's thread)."""
        try:
            self.queue.put_nowait((kind, record))
        except queue.Full:
            self.dropped += 1

    def _format(self, kind: str, record: object) -> bytes:
        text = line(record, self._clock) if isinstance(record, QueryEvent) else json.dumps(record)
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


class JetStreamSink:
    """The query log's events to the fleet stream: an observe ``Sink``."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher

    def put(self, event: QueryEvent) -> None:
        self.publisher.publish("query", event)

    def close(self) -> None:
        self.publisher.close()

    def collect(self) -> Iterator[Metric]:
        return self.publisher.collect()
