"""Replays: answers the pipeline produced, re-sent byte-for-byte to the next identical question.

A replay is keyed by identity and by the question as it appears on the wire (lower-cased name, type, class and
the flags that change the answer). Serving one costs a hand parse of the header and question, two dict
lookups, and slicing in the client's ID and question case — no dnspython objects. TTLs of cached data are
counted down by patching the rendered bytes at most once a second. Replays never outlive what produced them:
the cache entry's expiry, or a few minutes for synthesised answers; a reload drops them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ztdns.cache import CacheEntry
from ztdns.protocol.respond import UDP_PAYLOAD
from ztdns.resolver import Question
from ztdns.wire import WireQuery, ttl_offsets


@dataclass(slots=True)
class Replay:
    key: bytes  # the normal-form question key (ztdns.wire.WireQuery.key)
    wire: bytes
    expires: float  # time.monotonic() deadline
    log_fragment: str
    kind: str
    rcode: str
    # Counting TTLs down (cached data only): TTL fields, their values at age 0, the age ``wire`` shows.
    offsets: list[tuple[int, int]] | None = None
    stored: float = 0.0
    age: int = 0
    entry: CacheEntry | None = None
    question: Question | None = None
    prefetch_at: float = float("inf")
    # When the TTLs shown must next go down by a second (time.monotonic()); never for fixed answers.
    rerender_at: float = float("inf")
    guard: Callable[[], bool] | None = None  # see QueryContext.replay_guard

    def rerender(self, now: float) -> bytes:
        """Count the TTLs down to the current age; the caller checked ``now >= rerender_at``."""
        assert self.offsets is not None
        age = int(now - self.stored)
        wire = bytearray(self.wire)
        for offset, ttl in self.offsets:
            wire[offset : offset + 4] = max(ttl - age, 0).to_bytes(4, "big")
        self.wire = bytes(wire)
        self.age = age
        self.rerender_at = self.stored + age + 1
        return self.wire


def make_countdown(wire: bytes, rendered_age: int) -> list[tuple[int, int]]:
    """TTL offsets of ``wire`` with the TTLs they had at age 0."""
    return [(offset, ttl + rendered_age) for offset, ttl in ttl_offsets(wire)]


class ReplayTable:
    """Replays per identity (None: unknown clients), FIFO-bounded per identity.

    ``tables`` holds replays by normal-form question key; ``exact`` indexes the same replays by the query's
    bytes after the ID, with what serving them needs: (replay, name end if the case differs else 0, UDP limit).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tables: dict[str | None, dict[bytes, Replay]] = {}
        self.exact: dict[str | None, dict[bytes, tuple[Replay, int, int]]] = {}

    def get(self, identity: str | None, key: bytes) -> Replay | None:
        table = self.tables.get(identity)
        return None if table is None else table.get(key)

    def put(self, identity: str | None, key: bytes, replay: Replay) -> None:
        if self.limit <= 0:
            return
        table = self.tables.setdefault(identity, {})
        if key not in table and len(table) >= self.limit:
            del table[next(iter(table))]
        table[key] = replay

    def remember_exact(self, identity: str | None, tail: bytes, replay: Replay, name_end: int, limit: int) -> None:
        if self.limit <= 0:
            return
        table = self.exact.setdefault(identity, {})
        if tail not in table and len(table) >= self.limit:
            del table[next(iter(table))]
        table[tail] = (replay, name_end, limit)

    def drop(self, identity: str | None, key: bytes) -> None:
        """Forget an expired replay; exact entries pointing at it are dropped when next found expired."""
        table = self.tables.get(identity)
        if table is not None:
            table.pop(key, None)

    def size(self) -> int:
        # list(): the UDP lane may add an identity's table while a scrape counts.
        return sum(len(table) for table in list(self.tables.values()))


def splice(query: bytes, parsed: WireQuery, answer: bytes) -> bytes:
    """The answer with the client's ID and the client's spelling of the question name (0x20-safe)."""
    end = parsed.name_end
    return query[:2] + answer[2:12] + query[12:end] + answer[end:]


def udp_limit(parsed: WireQuery) -> int:
    """The largest UDP answer this query accepts: its EDNS size (512 without EDNS), capped at ours."""
    return min(parsed.max_size, UDP_PAYLOAD)
