"""The JSON query log: a sink of query events, queued on the serving thread, formatted and written by a thread.

Failure behaviour: a line that cannot be written (full disk, closed or stalled output) is counted in ``dropped``
(every one: a failed batch counts all its lines) and said on stderr, at most once per ``report_interval``
seconds with the count since the last report. The writer never blocks for ever: it waits for the output to
accept bytes in short polls, writes at most a pipe's atomic size at a time to a pipe, and at shutdown gives up after
``close_timeout`` seconds, so SIGTERM finishes even when stdout is a pipe nobody reads.
"""

from __future__ import annotations

import collections
import json
import os
import select
import stat
import sys
import threading
import time

from ztdns.observe.events import Answered, QueryEvent

_PIPE_CHUNK = 4096  # PIPE_BUF: a pipe (or socket, terminal) that polls writable takes this much without blocking
_FILE_CHUNK = 1 << 20  # a regular file always polls writable and never blocks for long
_POLL_MS = 100


class QueryLog:
    """Writes one JSON line per query event to stdout or a file without blocking the caller.

    ``put`` only appends the event to a deque (thread-safe for producers on the event loop and the UDP lanes and
    one consumer); the writer thread formats and writes them every ``interval`` seconds. When more than ``limit``
    events wait, new ones are dropped and counted.
    """

    def __init__(
        self,
        output: str,
        limit: int,
        interval: float = 0.05,
        report_interval: float = 10.0,
        close_timeout: float = 1.0,
    ) -> None:
        self.output = output
        self.limit = limit
        self.interval = interval
        self.report_interval = report_interval
        self.close_timeout = close_timeout
        self.dropped = 0
        self.written = 0
        self._reported = 0  # dropped lines already said on stderr
        self._last_report = -report_interval
        self._last_error = ""
        self._events: collections.deque[QueryEvent] = collections.deque()
        self._clock = Clock()
        self._stop = threading.Event()
        self._reopen = False  # set by reopen(), acted on by the writer thread before its next write
        self._fd = self._open()
        self._chunk = _FILE_CHUNK if stat.S_ISREG(os.fstat(self._fd).st_mode) else _PIPE_CHUNK
        self._thread = threading.Thread(target=self._run, name="ztdns-querylog", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.output == "stdout":
            return sys.stdout.fileno()
        return os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def put(self, event: QueryEvent) -> None:
        if len(self._events) >= self.limit:
            self.dropped += 1
            return
        self._events.append(event)

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away; SIGHUP)."""
        self._reopen = True

    def _write_all(self, data: bytes, deadline: float | None) -> None:
        """Write DATA, waiting for the output to take it; TimeoutError after DEADLINE, or when stopping."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while view:
            if not poller.poll(_POLL_MS):
                if self._stop.is_set() and (deadline is None or time.monotonic() > deadline):
                    raise TimeoutError("output not taking lines")
                continue
            written = os.write(self._fd, view[: self._chunk])
            view = view[written:]

    def _drain(self, deadline: float | None = None) -> None:
        if self._reopen and self.output != "stdout":
            self._reopen = False
            try:
                fd = self._open()
            except OSError as exc:  # keep writing where we were rather than nowhere
                self._last_error = f"reopening {self.output}: {exc.strerror or exc}"
            else:
                os.close(self._fd)
                self._fd = fd
        events = self._events
        batch = []
        while events:
            batch.append(line(events.popleft(), self._clock))
        if not batch:
            return
        batch.append("")
        try:
            self._write_all("\n".join(batch).encode(), deadline)
        except (OSError, ValueError) as exc:  # a full disk, a closed or stalled output: these lines are lost
            self.dropped += len(batch) - 1
            self._last_error = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
            return
        self.written += len(batch) - 1

    def _report(self, force: bool = False) -> None:
        """Say on stderr how many lines were lost since the last report (at most once per report_interval)."""
        lost = self.dropped - self._reported
        now = time.monotonic()
        if not lost or (not force and now - self._last_report < self.report_interval):
            return
        self._reported += lost
        self._last_report = now
        why = f" ({self._last_error})" if self._last_error else " (the writer fell behind)"
        try:
            sys.stderr.write(f"ztdns: query log: {lost} lines lost{why}; {self.dropped} in all\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
            self._report()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.close_timeout + 2 * _POLL_MS / 1000)
        if not self._thread.is_alive():
            self._drain(deadline=time.monotonic() + self.close_timeout)
        self.dropped += len(self._events)  # what a stalled output never took
        self._events.clear()
        self._report(force=True)
        if self.output != "stdout":
            os.close(self._fd)


def line(event: QueryEvent, clock: Clock) -> str:
    """The log line of one event; key order and spelling are the documented query log format."""
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
