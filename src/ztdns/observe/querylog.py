"""The JSON lines sink (the query log and ``[[log.sinks]] type = "json"``): one line per event to stdout or a
file, written in batches by the sink's thread; the file is reopened by name on SIGHUP, and rotated copies beside it
older than ``retention`` seconds are deleted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from ztdns.observe.formats import Formatter
from ztdns.observe.privacy import Aggregate
from ztdns.observe.sinks import TextSink

RETENTION_CHECK = 60.0  # seconds between looks for expired files


class QueryLog(TextSink):
    """Writes one JSON line per event to stdout or a file without blocking the caller (``put`` only queues)."""

    kind = "json"

    def __init__(
        self,
        output: str,
        limit: int,
        formatter: Formatter | None = None,
        aggregate: Aggregate | None = None,
        retention: float = 0.0,
        name: str = "query_log",
    ) -> None:
        super().__init__(name, limit, formatter or Formatter("native", None, ""), aggregate)
        self.output = output
        self.retention = retention
        self._reopen = False  # set by reopen(), acted on by the thread before its next write
        self._next_retention = 0.0
        self._stream: TextIO = sys.stdout if output == "stdout" else open(output, "a", encoding="utf-8")  # noqa: SIM115
        self.start()

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away; SIGHUP)."""
        self._reopen = True

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        if self._reopen and self._stream is not sys.stdout:
            self._reopen = False
            self._stream.close()
            self._stream = open(self.output, "a", encoding="utf-8")  # noqa: SIM115
        self._stream.write("".join(text + "\n" for _, text in lines))
        self._stream.flush()

    def tick(self, now: float) -> None:
        if self.retention > 0 and self.output != "stdout" and now >= self._next_retention:
            self._next_retention = now + RETENTION_CHECK
            expire(Path(self.output), self.retention, now)

    def shutdown(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()


def expire(output: Path, retention: float, now: float) -> list[Path]:
    """Delete rotated copies of ``output`` (``query.log.1``, ``query.log-20261207.gz``, …) last written more than
    ``retention`` seconds ago; the file in use is never deleted. Returns what was deleted."""
    deleted: list[Path] = []
    try:
        candidates = list(output.parent.iterdir())
    except OSError:
        return deleted
    for path in candidates:
        if not path.name.startswith(output.name) or path.name == output.name or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime > retention:
                path.unlink()
                deleted.append(path)
        except OSError:
            continue
    return deleted
