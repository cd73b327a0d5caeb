"""The JSON lines sink (the query log and ``[[log.sinks]] type = "json"``): one line per event to stdout or a
file, written in batches by the sink's thread; the file is reopened by name on SIGHUP, and rotated copies beside it
older than ``retention`` seconds are deleted."""

from __future__ import annotations

import os
import select
import stat
import sys
from pathlib import Path

from ztdns.observe.formats import Formatter, native_extension
from ztdns.observe.privacy import Aggregate
from ztdns.observe.ring import Batch, items
from ztdns.observe.sinks import RECORDS_PER_WRITE, TextSink

RETENTION_CHECK = 60.0  # seconds between looks for expired files
_PIPE_CHUNK = 4096  # PIPE_BUF: a pipe (or socket, terminal) that polls writable takes this much without blocking
_FILE_CHUNK = 1 << 20  # a regular file always polls writable and never blocks for long
_POLL_MS = 100
# Disk blocks allocated ahead of a regular file's end (its size unchanged): appends into allocated blocks cost the
# kernel about a fifth less CPU than appends the file system must allocate for page by page (docs/benchmarks.md).
# A rotated copy keeps at most this much beyond its end until it is deleted or truncated.
RESERVE = 4 << 20


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
        # A plain descriptor written with poll(): the thread never blocks for good on an output nobody reads (a
        # stdout pipe), so SIGTERM finishes; what it could not write is counted in ``dropped`` and said on stderr.
        self._fd = self._open()
        self._chunk = _FILE_CHUNK if stat.S_ISREG(os.fstat(self._fd).st_mode) else _PIPE_CHUNK
        # The file's end after the last write, and the offset up to which its blocks are allocated (_reserve; -1:
        # not done: the file system cannot, or stdout, a file we did not open and whose offset is not ours to move).
        self._end = 0
        self._reserved = -1 if output == "stdout" else 0
        self.start()

    def _open(self) -> int:
        if self.output == "stdout":
            return sys.stdout.fileno()
        return os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away; SIGHUP)."""
        self._reopen = True

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        self._reopen_if_asked()
        self._write("".join(text + "\n" for _, text in lines))

    def send_queries(self, batch: Batch, now: float) -> bool:
        native = self.formatter.native
        assert native is not None  # raw is set only with it
        self._reopen_if_asked()
        for start in range(0, len(batch), RECORDS_PER_WRITE):
            made = native.data(batch, start, start + RECORDS_PER_WRITE)
            if made is None:  # security events among the queries
                part = items(batch, start, start + RECORDS_PER_WRITE)
                made = memoryview("".join(text + "\n" for _, text in self.raw_lines(part)).encode())
            self._write_bytes(made)
        return True

    def _reopen_if_asked(self) -> None:
        if self._reopen and self.output != "stdout":
            self._reopen = False
            try:
                fd = self._open()
            except OSError as exc:  # keep writing where we were rather than nowhere
                self.last_error = f"reopening {self.output}: {exc.strerror or exc}"
            else:
                os.close(self._fd)
                self._fd = fd
                self._end = self._reserved = 0

    def _write(self, text: str) -> None:
        self._write_bytes(text.encode())

    def _write_bytes(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._chunk == _FILE_CHUNK:  # polls writable anyway: no poll object per write
            self._reserve(len(view))
            while view:
                view = view[os.write(self._fd, view[: self._chunk]) :]
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while view:
            if not poller.poll(_POLL_MS):
                if self.stopping_past_deadline():
                    raise TimeoutError("output not taking lines")
                continue
            view = view[os.write(self._fd, view[: self._chunk]) :]

    def _reserve(self, size: int) -> None:
        """Allocate the file's next RESERVE bytes of blocks before a write of ``size`` bytes would pass the end of
        those allocated so far (again from the end when the file was truncated meanwhile: copytruncate)."""
        extension = native_extension()
        if extension is None or self._reserved < 0:
            return
        end = os.lseek(self._fd, 0, os.SEEK_END)  # O_APPEND writes there whatever the offset
        if end + size > self._reserved or end < self._end:  # past what was allocated, or truncated since
            reserved = max(size, RESERVE)
            self._reserved = end + reserved if extension.reserve(self._fd, end, reserved) else -1
        self._end = end + size

    def tick(self, now: float) -> None:
        if self.retention > 0 and self.output != "stdout" and now >= self._next_retention:
            self._next_retention = now + RETENTION_CHECK
            expire(Path(self.output), self.retention, now)

    def shutdown(self) -> None:
        if self.output != "stdout":
            os.close(self._fd)


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
