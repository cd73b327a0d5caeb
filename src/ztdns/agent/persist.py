"""Learned grants survive restarts: a snapshot plus an append-only journal in the state directory.

Each committed batch appends one JSON line (an array of its grants) to ``journal.jsonl`` with a plain ``write``
— one encoder call per batch, not per grant: this runs on the answer path — (no fsync: the
page cache survives the agent being killed, which is the case that matters; a host crash reboots with an empty
table anyway). At start the snapshot and journal are replayed, expired grants dropped, and a fresh snapshot
written; the journal is compacted the same way once it holds more than ``compact_after`` grants.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ztdns.agent.allowstate import Grant

SNAPSHOT = "grants.json"
JOURNAL = "journal.jsonl"
# json's own string encoder (C, ASCII-escaping): the journal line is formatted directly, byte for byte what
# json.dumps(…, separators=(",", ":")) writes, without building a dict per grant and walking it again.
_string = json.encoder.encode_basestring_ascii


def _encode(grant: Grant) -> dict[str, object]:
    return {"a": grant.address, "n": grant.name, "e": round(grant.expires, 3), "i": grant.identity}


def _decode(item: dict[str, object]) -> Grant | None:
    try:
        return Grant(str(item["a"]), str(item["n"]), float(item["e"]), str(item.get("i", "")))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None


class GrantStore:
    def __init__(self, state_dir: Path, compact_after: int = 200_000) -> None:
        self.dir = state_dir
        self.compact_after = compact_after
        self._journal_fd: int | None = None
        self._journal_lines = 0

    def load(self, now: float) -> list[Grant]:
        """All grants still alive at ``now``; the newest record per (address, name) wins."""
        latest: dict[tuple[str, str], Grant] = {}
        for item in self._read():
            grant = _decode(item)
            if grant is not None and grant.expires > now:
                key = (grant.address, grant.name)
                if key not in latest or latest[key].expires < grant.expires:
                    latest[key] = grant
        return list(latest.values())

    def _read(self) -> Iterable[dict[str, object]]:
        snapshot = self.dir / SNAPSHOT
        if snapshot.exists():
            # A torn snapshot is skipped: the journal still holds recent grants.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                yield from json.loads(snapshot.read_text(encoding="utf-8")).get("grants", [])
        journal = self.dir / JOURNAL
        if journal.exists():
            with journal.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue  # a torn last line after a kill
                    for grant in item if isinstance(item, list) else [item]:
                        if isinstance(grant, dict):
                            yield grant

    def snapshot(self, grants: Iterable[Grant]) -> None:
        """Write all live grants atomically and start an empty journal."""
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self.dir / (SNAPSHOT + ".tmp")
        temporary.write_text(json.dumps({"grants": [_encode(g) for g in grants]}), encoding="utf-8")
        os.replace(temporary, self.dir / SNAPSHOT)
        self.close()
        self._journal_fd = os.open(self.dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._journal_lines = 0

    def append(self, grants: Iterable[Grant]) -> bool:
        """Journal ``grants``; True when the journal is due for compaction."""
        if self._journal_fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._journal_fd = os.open(self.dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        records = [
            f'{{"a":{_string(g.address)},"n":{_string(g.name)},"e":{round(g.expires, 3)!r},"i":{_string(g.identity)}}}'
            for g in grants
        ]
        if records:
            os.write(self._journal_fd, ("[" + ",".join(records) + "]\n").encode())
            self._journal_lines += len(records)
        return self._journal_lines >= self.compact_after

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
