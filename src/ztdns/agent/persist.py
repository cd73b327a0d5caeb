"""Learned grants survive restarts: a snapshot plus an append-only journal in the state directory.

Every file is JSON lines, each line an array of grants (``{"a": address, "n": name, "e": expiry, "i":
identity}``). Each committed batch appends one line to ``journal.jsonl`` with a plain ``write`` — one encoder
call per batch, not per grant: this runs on the answer path — (no fsync: the page cache survives the agent being
killed, which is the case that matters; a host crash reboots with an empty table anyway).

Compaction never holds up answers: the journal is moved aside (``journal.old.jsonl``) and a fresh one started,
the live grants are written to ``snapshot.jsonl.tmp`` a chunk at a time between answers, the file is renamed to
``snapshot.jsonl`` and only then is the old journal deleted. Loading reads the snapshot, the old journal and the
journal, and the latest expiry per (address, name) wins, so a crash at any step loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from ztdns.agent.allowstate import Grant

SNAPSHOT = "snapshot.jsonl"
JOURNAL = "journal.jsonl"
OLD_JOURNAL = "journal.old.jsonl"
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND
# json's own string encoder (C, ASCII-escaping): a line is formatted directly, byte for byte what
# json.dumps(…, separators=(",", ":")) writes, without building a dict per grant and walking it again.
_string = json.encoder.encode_basestring_ascii


def _line(grants: Iterable[Grant]) -> bytes:
    """One JSON array of ``grants`` and a newline; empty when there are none."""
    records = [
        f'{{"a":{_string(g.address)},"n":{_string(g.name)},"e":{round(g.expires, 3)!r},"i":{_string(g.identity)}}}'
        for g in grants
    ]
    return ("[" + ",".join(records) + "]\n").encode() if records else b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _decode(item: object) -> Grant | None:
    if not isinstance(item, dict):
        return None
    try:
        return Grant(str(item["a"]), str(item["n"]), float(item["e"]), str(item.get("i", "")))
    except (KeyError, TypeError, ValueError):
        return None


class GrantStore:
    def __init__(self, state_dir: Path, compact_after: int = 200_000) -> None:
        self.dir = state_dir
        self.compact_after = compact_after
        self._journal_fd: int | None = None
        self._journal_grants = 0
        self._snapshot_fd: int | None = None  # while a compaction writes the next snapshot

    def load(self, now: float) -> list[Grant]:
        """All grants still alive at ``now``; the newest record per (address, name) wins."""
        latest: dict[tuple[str, str], Grant] = {}
        for grant in self._read():
            if grant.expires > now:
                key = (grant.address, grant.name)
                if key not in latest or latest[key].expires < grant.expires:
                    latest[key] = grant
        return list(latest.values())

    def _read(self) -> Iterator[Grant]:
        for name in (SNAPSHOT, OLD_JOURNAL, JOURNAL):
            path = self.dir / name
            if not path.exists():
                continue
            with path.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        items = json.loads(line)
                    except ValueError:
                        continue  # a torn last line after a kill
                    for item in items if isinstance(items, list) else [items]:
                        grant = _decode(item)
                        if grant is not None:
                            yield grant

    def append(self, grants: Collection[Grant]) -> bool:
        """Journal ``grants``; True when the journal is due for compaction (and none is under way)."""
        if self._journal_fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._journal_fd = os.open(self.dir / JOURNAL, _APPEND, 0o600)
        if grants:
            _write_all(self._journal_fd, _line(grants))
            self._journal_grants += len(grants)
        return self._journal_grants >= self.compact_after and self._snapshot_fd is None

    def snapshot(self, grants: Iterable[Grant]) -> None:
        """Compact in one go (at start and stop): ``grants`` become the snapshot, the journal starts empty."""
        self.begin_compaction()
        try:
            self.write_snapshot(grants)
        except BaseException:
            self.abort_compaction()
            raise
        self.finish_compaction()

    def begin_compaction(self) -> None:
        """Move the journal aside, start a fresh one, and open the next snapshot for :meth:`write_snapshot`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.close()
        journal, old = self.dir / JOURNAL, self.dir / OLD_JOURNAL
        if journal.exists():
            if old.exists():  # an earlier compaction did not finish: its journal still counts
                with old.open("ab") as target:
                    target.write(journal.read_bytes())
                journal.unlink()
            else:
                os.replace(journal, old)
        self._journal_fd = os.open(journal, _APPEND, 0o600)
        self._journal_grants = 0
        self._snapshot_fd = os.open(self.dir / (SNAPSHOT + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def write_snapshot(self, grants: Iterable[Grant]) -> None:
        """Add ``grants`` (a chunk of the live ones) to the snapshot being written."""
        assert self._snapshot_fd is not None, "begin_compaction first"
        _write_all(self._snapshot_fd, _line(grants))

    def finish_compaction(self) -> None:
        """The new snapshot replaces the old one; the journal moved aside is no longer needed."""
        assert self._snapshot_fd is not None, "begin_compaction first"
        os.close(self._snapshot_fd)
        self._snapshot_fd = None
        os.replace(self.dir / (SNAPSHOT + ".tmp"), self.dir / SNAPSHOT)
        (self.dir / OLD_JOURNAL).unlink(missing_ok=True)

    def abort_compaction(self) -> None:
        """Give up the snapshot being written; the journal moved aside stays and is read at start."""
        if self._snapshot_fd is not None:
            os.close(self._snapshot_fd)
            self._snapshot_fd = None
        with contextlib.suppress(OSError):
            (self.dir / (SNAPSHOT + ".tmp")).unlink()

    def remove(self) -> list[str]:
        """Delete every grant file (uninstall); the names of those that existed."""
        self.close()
        removed = []
        for name in (SNAPSHOT, SNAPSHOT + ".tmp", OLD_JOURNAL, JOURNAL):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
                removed.append(name)
        return removed

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
