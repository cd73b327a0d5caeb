"""The JSON query log: lines are queued on the event loop and written by a thread."""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from typing import TextIO


class QueryLog:
    """Writes whole lines to stdout or a file without blocking the caller.

    ``write`` only appends to a deque (thread-safe for one producer and one consumer); the writer thread drains
    it every ``interval`` seconds. When more than ``limit`` lines wait, new lines are dropped and counted.
    """

    def __init__(self, output: str, limit: int, interval: float = 0.05) -> None:
        self.output = output
        self.limit = limit
        self.interval = interval
        self.dropped = 0
        self.written = 0
        self._lines: collections.deque[str] = collections.deque()
        self._stop = threading.Event()
        self._reopen = False  # set by reopen(), acted on by the writer thread before its next write
        self._stream: TextIO = sys.stdout if output == "stdout" else open(output, "a", encoding="utf-8")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="ztdns-querylog", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        if len(self._lines) >= self.limit:
            self.dropped += 1
            return
        self._lines.append(line)

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away; SIGHUP)."""
        self._reopen = True

    def _drain(self) -> None:
        if self._reopen and self._stream is not sys.stdout:
            self._reopen = False
            self._stream.close()
            self._stream = open(self.output, "a", encoding="utf-8")  # noqa: SIM115
        lines = self._lines
        batch = []
        while lines:
            batch.append(lines.popleft())
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
                self.dropped += len(self._lines)
                self._lines.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError, ValueError):
            self._drain()
        if self._stream is not sys.stdout:
            self._stream.close()


class Clock:
    """ISO 8601 timestamps with milliseconds, re-formatting the seconds part once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"
