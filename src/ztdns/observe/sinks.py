"""The sink machinery every sink shares: a bounded queue filled on the serving thread, drained in batches by the
sink's own thread, which formats and writes; events beyond the bound are dropped and counted, never waited for.

A sink that stalls (a collector that stops reading, a full disk) blocks only its own thread: its queue fills and
further events are dropped (``dropped``), while answering goes on at full speed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time

from ztdns.observe.events import Event, QueryEvent
from ztdns.observe.formats import Formatter
from ztdns.observe.privacy import Aggregate

log = logging.getLogger(__name__)

REPORT_INTERVAL = 10.0  # seconds between stderr reports of lost events (the first is said at once)
CLOSE_TIMEOUT = 1.0  # seconds the last batch gets at shutdown


class QueueSink:
    """Base of the sinks: ``put`` appends to a deque (safe for many producers and this one consumer); the thread
    calls :meth:`emit` with what waited, every ``interval`` seconds. Subclasses implement ``emit``."""

    kind = "sink"

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
        self._events: collections.deque[Event] = collections.deque()
        self._stop = threading.Event()
        self.closing = False  # the last batch: aggregates close their window
        self._thread = threading.Thread(target=self._run, name=f"ztdns-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, event: Event) -> None:
        if len(self._events) >= self.limit:
            self.dropped += 1
            return
        self._events.append(event)

    def reopen(self) -> None:
        """SIGHUP: files are opened again by name (after log rotation); other sinks ignore it."""

    def _batch(self) -> list[Event]:
        events = self._events
        batch = []
        while events:
            batch.append(events.popleft())
        return batch

    def emit(self, batch: list[Event], now: float) -> None:
        """Format and write ``batch`` (raise OSError when the output fails), counting ``written``."""
        raise NotImplementedError

    def _drain(self) -> None:
        batch = self._batch()
        try:
            self.emit(batch, time.time())
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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
            self._report()

    def close(self) -> None:
        self.deadline = time.monotonic() + CLOSE_TIMEOUT
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CLOSE_TIMEOUT + 0.5)
        self.closing = True
        if not self._thread.is_alive():  # else it still holds a batch the output does not take: leave it
            with contextlib.suppress(OSError, ValueError):
                self._drain()
        self.dropped += len(self._events)  # what a stalled output never took
        self._events.clear()
        self._report(force=True)
        self.shutdown()

    def stopping_past_deadline(self) -> bool:
        """For outputs that wait for their peer: give up now (shutdown, and the last batch had its time)."""
        return self._stop.is_set() and time.monotonic() > self.deadline

    def shutdown(self) -> None:
        """Release the output (after the last batch)."""


class TextSink(QueueSink):
    """A sink of text records, one per event (JSON in the sink's format), or with privacy ``aggregate`` one per
    window; subclasses implement :meth:`send`."""

    def __init__(self, name: str, limit: int, formatter: Formatter, aggregate: Aggregate | None = None) -> None:
        super().__init__(name, limit)
        self.formatter = formatter
        self.aggregate = aggregate

    def emit(self, batch: list[Event], now: float) -> None:
        aggregate = self.aggregate
        if aggregate is None:
            text = self.formatter.text
            lines = [(event.kind if not isinstance(event, QueryEvent) else "query", text(event)) for event in batch]
        else:
            # No per-query record leaves: queries only feed the window's counts; security events name no query.
            aggregate.add(event for event in batch if isinstance(event, QueryEvent))
            lines = [(event.kind, self.formatter.text(event)) for event in batch if not isinstance(event, QueryEvent)]
            if aggregate.due(now) or self.closing:
                lines.append(("aggregate", self.formatter.aggregate(aggregate.close(now))))
        if lines:
            self.send(lines, now)
        self.written += len(batch)

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        """Write ``(message kind, text)`` records: "query", "detect", "aggregate"."""
        raise NotImplementedError
