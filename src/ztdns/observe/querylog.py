"""The JSON query log: a sink of query events, queued on the serving thread, formatted and written by a thread."""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import threading
import time
from typing import TextIO

from ztdns.observe.events import Answered, Event, SecurityEvent


class QueryLog:
    """Writes one JSON line per query event to stdout or a file without blocking the caller.

    ``put`` only appends the event to a deque (thread-safe for producers on the event loop and the UDP lanes and
    one consumer); the writer thread formats and writes them every ``interval`` seconds. When more than ``limit``
    events wait, new ones are dropped and counted.
    """

    def __init__(self, output: str, limit: int, interval: float = 0.05) -> None:
        self.output = output
        self.limit = limit
        self.interval = interval
        self.dropped = 0
        self.written = 0
        self._events: collections.deque[Event] = collections.deque()
        self._clock = Clock()
        self._stop = threading.Event()
        self._reopen = False  # set by reopen(), acted on by the writer thread before its next write
        self._stream: TextIO = sys.stdout if output == "stdout" else open(output, "a", encoding="utf-8")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="ztdns-querylog", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        if len(self._events) >= self.limit:
            self.dropped += 1
            return
        self._events.append(event)

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away; SIGHUP)."""
        self._reopen = True

    def _drain(self) -> None:
        if self._reopen and self._stream is not sys.stdout:
            self._reopen = False
            self._stream.close()
            self._stream = open(self.output, "a", encoding="utf-8")  # noqa: SIM115
        events = self._events
        batch = []
        while events:
            batch.append(line(events.popleft(), self._clock))
        if batch:
            batch.append("")
            self._stream.write("\n".join(batch))
            self._stream.flush()
            self.written += len(batch) - 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._drain()
            except (OSError, ValueError):  # a closed or full output must not kill the writer; lines are lost
                self.dropped += len(self._events)
                self._events.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError, ValueError):
            self._drain()
        if self._stream is not sys.stdout:
            self._stream.close()


def line(event: Event, clock: Clock) -> str:
    """The log line of one event; key order and spelling are the documented query log format."""
    if isinstance(event, SecurityEvent):
        return json.dumps({"time": clock.format(event.time), "event": event.kind, **event.fields})
    certificate = event.certificate
    proven = "null" if certificate is None else json.dumps(certificate)
    return (
        f'{{"time": "{clock.format(event.time)}", "transport": "{event.transport}", '
        f'"client": {json.dumps(event.client)}, "certificate": {proven}, {members(event.answer)}, '
        f'"latency_ms": {event.latency * 1000:.3f}}}'
    )


def members(answer: Answered) -> str:
    """The answer's JSON members, made once per answer (replays share it)."""
    made = answer.json
    if made is None:
        made = answer.json = json.dumps(
            {
                "identity": answer.identity,
                "qname": answer.qname,
                "qtype": answer.qtype,
                "decision": answer.decision,
                "kind": answer.kind,
                "policy": answer.policy,
                "rule": answer.rule,
                "rcode": answer.rcode,
                "ede": answer.ede,
                "answers": [rdata.to_text() for rdata in answer.answers],
                "cache_hit": answer.cache_hit,
                "upstream": answer.upstream,
            }
        )[1:-1]
    return made


class Clock:
    """ISO 8601 timestamps with milliseconds, re-formatting the seconds part once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"
