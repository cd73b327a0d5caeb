"""The sink machinery: the :class:`Feed` the serving threads add query records to (one record copied into its ring
per query, whatever the number of sinks: ``observe/ring.py``), its thread that takes the ring's batch and hands it
to every sink, and the sinks' bounded queues, each drained in batches by the sink's own thread, which formats and
writes. Records beyond a bound are dropped and counted, never waited for.

Sinks that format from the records themselves (``raw``: the native query log with full privacy, dnstap) get the
batch as it is — a chunk of the ring, no object per query is made for them — and make each record from parts made
once per client and answer; the others get the same batches and make QueryEvents of them on their own thread as
they take them. One write per batch.

A sink that stalls (a collector that stops reading, a full disk) blocks only its own thread: its queue fills and
further events are dropped (``dropped``), while answering and the other sinks go on at full speed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

from ztdns.observe.events import Event, Item, QueryEvent, SecurityEvent, UpstreamEvent
from ztdns.observe.formats import Formatter, native_extension, only_queries
from ztdns.observe.privacy import Aggregate
from ztdns.observe.ring import Batch, Chunk, items, make_ring, take

log = logging.getLogger(__name__)

REPORT_INTERVAL = 10.0  # seconds between stderr reports of lost events (the first is said at once)
CLOSE_TIMEOUT = 1.0  # seconds the last batch gets at shutdown from an output that waits for its peer
# Records made and written at a time by the sinks that make them in C (the native log, dnstap): a batch of a busy
# second is thousands; made and written piecewise, the buffer they are made in (≈ 640 KB of native lines) stays in
# the CPU's cache for the write to read (a whole batch at once cost about twice the CPU), while each write(2)'s own
# cost (≈ 8 µs into a file) is spread over many lines (1,024 rather than 256: −0.05 µs a line, bench/querylog.py).
RECORDS_PER_WRITE = 1024


class Feed:
    """The one queue between the serving threads and the sinks: the observer adds records to ``ring`` (``add`` is
    its method) up to ``limit`` between two takes, beyond which the ring counts them dropped; the feed's thread
    takes the ring's batch every ``interval`` seconds and hands it to the sinks."""

    def __init__(self, sinks: list[QueueSink], interval: float = 0.02) -> None:
        self.sinks = sinks
        self.limit = max(sink.limit for sink in sinks)
        self.interval = interval
        self.ring = make_ring(self.limit, native_extension())
        self.add = self.ring.add
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ztdns-feed", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records dropped before any sink saw them (the ring was full)."""
        return self.ring.dropped

    def _dispatch(self) -> None:
        taken = take(self.ring)
        if taken is not None:
            for sink in self.sinks:
                sink.offer(taken)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._dispatch()
        self._dispatch()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sink in self.sinks:
            sink.close()


class QueueSink:
    """Base of the sinks: ``put`` appends to a deque (safe for many producers and this one consumer); the thread
    calls :meth:`emit` with what waited, every ``interval`` seconds. Subclasses implement ``emit``."""

    kind = "sink"
    # True: the sink takes the feed's batches as they are (a chunk of the ring, or the serving thread's tuples) and
    # :meth:`emit_raw` formats them; False: :meth:`emit` gets QueryEvents.
    raw = False

    def __init__(self, name: str, limit: int, interval: float = 0.05) -> None:
        self.name = name
        self.limit = limit
        self.interval = interval
        self.dropped = 0
        self.written = 0
        self.failures = 0  # batches lost to a failed write (the thread retries with the next one)
        self.last_error = ""
        self._reported = 0  # dropped events already said on stderr
        self._last_report = -REPORT_INTERVAL
        # At shutdown the last batch gets until this time.monotonic() to be written (an output nobody reads must
        # not hold SIGTERM); 0 while running: a stalled output then blocks only this sink's thread.
        self.deadline = 0.0
        # Batches as the feed offers them (shared between sinks: never modified); ``offered`` is written by the
        # feed's thread only and ``taken`` by this sink's only, so their difference is the queue's length.
        self._batches: collections.deque[Batch] = collections.deque()
        self.offered = 0
        self.taken = 0
        self._stop = threading.Event()
        self.closing = False  # the last batch: aggregates close their window
        self._thread = threading.Thread(target=self._run, name=f"ztdns-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, event: Event) -> None:
        if self.raw and isinstance(event, QueryEvent):
            self.offer([(event.time, event.client, event.answer, event.latency, event.query, event.response)])
        else:
            self.offer([event])

    def offer(self, batch: Batch) -> None:
        """Queue what fits under the bound (called by the feed's thread, one producer); the rest is dropped and
        counted. ``batch`` is kept as it is, not copied."""
        room = self.limit - (self.offered - self.taken)
        if room < len(batch):
            self.dropped += len(batch) - max(room, 0)
            batch = batch.head(max(room, 0)) if isinstance(batch, Chunk) else batch[: max(room, 0)]
        if batch:
            self._batches.append(batch)
            self.offered += len(batch)

    def reopen(self) -> None:
        """SIGHUP: files are opened again by name (after log rotation); other sinks ignore it."""

    def _take(self) -> list[Batch]:
        """The batches queued so far, as the feed offered them."""
        batches = self._batches
        taken = [batches.popleft() for _ in range(len(batches))]
        self.taken += sum(map(len, taken))
        return taken

    def emit(self, batch: list[Event], now: float) -> None:
        """Format and write ``batch`` (raise OSError when the output fails), counting ``written``."""
        raise NotImplementedError

    def emit_raw(self, batch: Batch, now: float) -> None:
        """:meth:`emit` for a sink with ``raw`` set: queries come as the feed's batch (a chunk of the ring, or the
        serving thread's tuples)."""
        raise NotImplementedError

    def _drain(self) -> None:
        taken = self._take()
        if self.raw:  # batch by batch as offered: the events are not copied into one list (a reference each)
            for batch in taken:
                self._emit(self.emit_raw, batch)
        else:  # one list, even when empty: an aggregate's window may be due
            # QueryEvents made here, a batch at a time, rather than by the feed for all such sinks: a slow sink's
            # queue holds the ring's compact chunks, not an object per query for the collector to go through.
            made = [QueryEvent(*item) if type(item) is tuple else item for part in taken for item in items(part)]
            self._emit(self.emit, made)  # type: ignore[arg-type]

    def _emit(self, write: Callable[[Batch, float], None], batch: Batch) -> None:
        try:
            write(batch, time.time())
        except (OSError, ValueError) as exc:  # the output failed: these events are lost, the next batch retries
            self.failures += 1
            self.dropped += len(batch)  # every one of them, not one per failed batch
            self.last_error = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)

    def _report(self, force: bool = False) -> None:
        """Say on stderr how many events were lost since the last report, at most once per REPORT_INTERVAL."""
        lost = self.dropped - self._reported
        now = time.monotonic()
        if not lost or (not force and now - self._last_report < REPORT_INTERVAL):
            return
        self._reported += lost
        self._last_report = now
        why = self.last_error or "the writer fell behind"
        log.warning("%s: %d records lost (%s); %d in all", self.name.replace("_", " "), lost, why, self.dropped)

    def stopping_past_deadline(self) -> bool:
        """For outputs that wait for their peer: give up now (shutdown, and the last batch had its time)."""
        return self._stop.is_set() and time.monotonic() > self.deadline

    def tick(self, now: float) -> None:
        """Periodic work of the sink's thread between batches (retention)."""

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
            self._report()
            self.tick(time.time())
        # The last batch and the output's release happen here, on this thread, never beside a write in progress.
        self.closing = True
        with contextlib.suppress(OSError, ValueError):
            self._drain()
        self._report(force=True)
        self.shutdown()

    def close(self) -> None:
        """Stop after the last batch; waits for it (a stalled output is given up after ``SEND_TIMEOUT``s)."""
        self.deadline = time.monotonic() + CLOSE_TIMEOUT
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        elif not self.closing:  # never started
            self.shutdown()

    def shutdown(self) -> None:
        """Release the output (after the last batch)."""

    def collect(self) -> Iterable[Metric]:
        """Metric families of the sink's own beyond events written and dropped (a publisher's, say)."""
        return ()


class TextSink(QueueSink):
    """A sink of text records, one per event (JSON in the sink's format), or with privacy ``aggregate`` one per
    window; subclasses implement :meth:`send`."""

    def __init__(self, name: str, limit: int, formatter: Formatter, aggregate: Aggregate | None = None) -> None:
        super().__init__(name, limit)
        self.formatter = formatter
        self.aggregate = aggregate
        self.raw = formatter.native is not None and aggregate is None

    def emit(self, batch: list[Event], now: float) -> None:
        aggregate = self.aggregate
        if aggregate is None:
            text = self.formatter.text
            lines = [
                ("query", text(event)) if isinstance(event, QueryEvent) else (event.kind, text(event))
                for event in batch
                if not isinstance(event, UpstreamEvent)  # upstream traffic goes to dnstap only
            ]
        else:
            # No per-query record leaves: queries feed the window's counts, and so do security events (which name
            # the client or name they are about): counted by detector, never written one by one.
            aggregate.add(event for event in batch if isinstance(event, QueryEvent))
            aggregate.add_security(event for event in batch if isinstance(event, SecurityEvent))
            lines = []
            if aggregate.due(now) or self.closing:
                lines.append(("aggregate", self.formatter.aggregate(aggregate.close(now))))
        if lines:
            self.send(lines, now)
        self.written += len(batch)

    def emit_raw(self, batch: Batch, now: float) -> None:
        """Native lines with full privacy: queries straight from the feed's batch, in one go."""
        if not self.send_queries(batch, now):
            lines = self.raw_lines(items(batch))
            if lines:
                self.send(lines, now)
        self.written += len(batch)

    def raw_lines(self, batch: list[Item]) -> list[tuple[str, str]]:
        """The records of a raw batch with security events among the queries (upstream traffic is not logged
        here), in order."""
        native = self.formatter.native
        assert native is not None  # raw is set only with it
        lines = []
        for item in batch:
            if type(item) is tuple:
                lines.append(("query", native.lines([item])[0]))
            elif isinstance(item, SecurityEvent):
                lines.append((item.kind, self.formatter.text(item)))
        return lines

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        """Write ``(message kind, text)`` records: "query", "detect", "aggregate"."""
        raise NotImplementedError

    def send_queries(self, batch: Batch, now: float) -> bool:
        """Write the native records of ``batch`` when it holds queries only (the common batch); False (nothing
        written) when it holds other events."""
        native = self.formatter.native
        assert native is not None  # raw is set only with it
        made = items(batch)
        if not only_queries(made):
            return False
        self.send([("query", text) for text in native.lines(made)], now)
        return True
