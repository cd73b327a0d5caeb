"""Replays: answers the pipeline produced, re-sent byte-for-byte to the next identical question.

Owns every part of a stored answer's life, for the resolver (``ztdns.handler.Frontend``) and the authoritative
server (``ztdns.authority.handler.Authority``) alike: the :class:`StoreHint` a stage leaves on the context when its
answer may be repeated, storing it (:meth:`Replays.store`), the lookup (:meth:`Replays.answer`: by the query's
bytes after the ID, else by the hand-parsed question's normal form), counting TTLs down (:meth:`Replay.rerender`)
and the prefetch trigger for popular cached entries.

A replay is keyed by identity and by the question as it appears on the wire (lower-cased name, type, class and
the flags that change the answer). Serving one costs a hand parse of the header and question at most, two dict
lookups, and slicing in the client's ID and question case — no dnspython objects. TTLs of cached data are
counted down by patching the rendered bytes at most once a second. Replays never outlive what produced them:
the cache entry's expiry, or a few minutes for synthesised answers; a reload drops them all.
Config: ``cache.max_entries`` bounds each identity's table. Metrics: the owners export the table size.
Client data touched: the identity name (the table's key); never logged here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ztdns.model import Question
from ztdns.observe.events import Answered
from ztdns.pipeline import QueryContext
from ztdns.wire.header import UDP_PAYLOAD, udp_limit
from ztdns.wire.query import parse_query
from ztdns.wire.records import ttl_offsets

if TYPE_CHECKING:
    from ztdns.cache import CacheEntry


@dataclass(slots=True)
class StoreHint:
    """Left on the context by the stage whose answer may be replayed: until when, and how."""

    until: float  # time.monotonic() deadline
    # Cached upstream data: the TTLs shown go down with age (synthesised and local answers keep theirs).
    counts_down: bool = False
    entry: CacheEntry | None = None  # the cached data the answer was rendered from
    age: int = 0  # seconds the rendered TTLs were already counted down by
    # For answers whose source can change before ``until`` (served zones): true while the replay is still right.
    guard: Callable[[], bool] | None = None
    wire: bytes | None = None  # the untruncated rendering, set by the respond stage
    answered: Answered | None = None  # what the observer said about it, set by the observe stage


@dataclass(slots=True)
class Replay:
    key: bytes  # the normal-form question key (ztdns.wire.WireQuery.key)
    wire: bytes
    expires: float  # time.monotonic() deadline
    answered: Answered  # for metrics and the query log
    # Counting TTLs down (cached data only): TTL fields, their values at age 0, the age ``wire`` shows.
    offsets: list[tuple[int, int]] | None = None
    stored: float = 0.0
    age: int = 0
    entry: CacheEntry | None = None
    question: Question | None = None
    prefetch_at: float = float("inf")
    # When the TTLs shown must next go down by a second (time.monotonic()); never for fixed answers.
    rerender_at: float = float("inf")
    guard: Callable[[], bool] | None = None  # see StoreHint.guard
    tail: bytes = b""  # ``wire`` after its ID: what a replay sends after the client's ID (made once, not per query)

    def __post_init__(self) -> None:
        self.tail = self.wire[2:]

    def rerender(self, now: float) -> bytes:
        """Count the TTLs down to the current age; the caller checked ``now >= rerender_at`` (at most once a
        second: until then ``wire`` is current)."""
        assert self.offsets is not None  # rerender_at is finite only with offsets
        age = int(now - self.stored)
        wire = bytearray(self.wire)
        for offset, ttl in self.offsets:
            wire[offset : offset + 4] = max(ttl - age, 0).to_bytes(4, "big")
        self.wire = bytes(wire)
        self.tail = self.wire[2:]
        self.age = age
        self.rerender_at = self.stored + age + 1
        return self.wire


class Replays:
    """Replays per identity (None: unknown clients, and the authoritative server), FIFO-bounded per identity.

    ``tables`` holds replays by normal-form question key; ``exact`` indexes the same replays by the query's
    bytes after the ID, with what serving them needs: (replay, name end if the case differs else 0, UDP limit).
    ``prefetch`` is called (on the caller's thread) when a replayed cache entry is due for a refresh.
    ``max_udp_payload``: the largest UDP answer replayed, whatever size the client offers (larger ones take the
    full path, which sends them truncated).
    """

    def __init__(
        self,
        limit: int,
        prefetch: Callable[[Question, CacheEntry], None] | None = None,
        max_udp_payload: int = UDP_PAYLOAD,
    ) -> None:
        self.limit = limit
        self.prefetch = prefetch
        self.max_udp_payload = max_udp_payload
        self.tables: dict[str | None, dict[bytes, Replay]] = {}
        self.exact: dict[str | None, dict[bytes, tuple[Replay, int, int]]] = {}

    def answer(self, identity: str | None, wire: bytes, stream: bool, now: float) -> tuple[bytes, Replay] | None:
        """The replayed answer to ``wire`` with the client's ID and spelling, or None (the full path answers).

        Runs on UDP lane threads as well as the event loop. Most repeat queries are byte-for-byte the same but
        for the ID, so they are looked up by those bytes first (no parsing at all); otherwise the question is
        parsed by hand and looked up by its normal form.
        """
        exact = self.exact.get(identity)
        found = None if exact is None else exact.get(wire[2:])
        if found is not None:
            replay, name_end, limit = found
            if now >= replay.expires or (replay.guard is not None and not replay.guard()):
                # Forget the bytes too: a newer replay of the question may be stored already (by its normal form).
                self._drop(identity, replay)
                self.exact.get(identity, {}).pop(wire[2:], None)
                found = None
        if found is not None:
            if now >= replay.rerender_at:
                replay.rerender(now)
            tail = replay.tail
            if len(tail) + 2 > limit and not stream:
                return None  # the full path sends it truncated
            answer = wire[:2] + tail  # the client's ID
            if name_end:  # the client spelled the name in another case than the rendered answer (0x20)
                answer = answer[:12] + wire[12:name_end] + tail[name_end - 2 :]
        else:
            parsed = parse_query(wire)
            if parsed is None:
                return None
            table = self.tables.get(identity)
            stored = None if table is None else table.get(parsed.key)
            if stored is None:
                return None
            replay = stored
            if now >= replay.expires or (replay.guard is not None and not replay.guard()):
                self._drop(identity, replay)
                return None
            answer = replay.wire if now < replay.rerender_at else replay.rerender(now)
            end = parsed.name_end
            limit = udp_limit(parsed.max_size, self.max_udp_payload)
            self._remember_exact(identity, wire[2:], replay, 0 if wire[12:end] == answer[12:end] else end, limit)
            if len(answer) > limit and not stream:
                return None
            answer = wire[:2] + answer[2:12] + wire[12:end] + answer[end:]  # the client's ID and spelling
        entry = replay.entry
        if entry is not None:
            entry.hits += 1  # popularity only: a lost update between threads does not matter
            if now >= replay.prefetch_at and not entry.prefetching and self.prefetch is not None:
                assert replay.question is not None  # set with prefetch_at
                self.prefetch(replay.question, entry)
        return answer, replay

    def store(self, ctx: QueryContext, hint: StoreHint, prefetch_window: float | None = None) -> None:
        """Keep the answer the pipeline just sent for replays to ``ctx.identity`` (``prefetch_window``: the
        fraction of a cached entry's TTL before expiry in which a replay triggers its refresh; None: never)."""
        parsed = parse_query(ctx.wire)
        full, answered = hint.wire, hint.answered
        if parsed is None or full is None or answered is None:
            return
        replay = Replay(parsed.key, full, hint.until, answered.replayed(), guard=hint.guard)
        entry = hint.entry
        if hint.counts_down and entry is not None:
            replay.offsets = [(offset, ttl + hint.age) for offset, ttl in ttl_offsets(full)]
            replay.stored = entry.stored
            replay.age = hint.age
            replay.rerender_at = entry.stored + hint.age + 1
            replay.entry = entry
            replay.question = ctx.question
            if prefetch_window is not None:
                replay.prefetch_at = entry.expires - entry.ttl * prefetch_window
        self.put(ctx.identity, replay)

    def put(self, identity: str | None, replay: Replay) -> None:
        if self.limit <= 0:
            return
        table = self.tables.setdefault(identity, {})
        if replay.key not in table and len(table) >= self.limit:
            del table[next(iter(table))]
        table[replay.key] = replay

    def _remember_exact(self, identity: str | None, tail: bytes, replay: Replay, name_end: int, limit: int) -> None:
        if self.limit <= 0:
            return
        table = self.exact.setdefault(identity, {})
        if tail not in table and len(table) >= self.limit:
            del table[next(iter(table))]
        table[tail] = (replay, name_end, limit)

    def clear(self) -> None:
        """Forget every replay (decisions changed: a detection verdict now blocks some answers)."""
        self.tables.clear()
        self.exact.clear()

    def _drop(self, identity: str | None, replay: Replay) -> None:
        """Forget an expired replay (not a newer one of the same question); exact entries pointing at it are
        dropped when next found."""
        table = self.tables.get(identity)
        if table is not None and table.get(replay.key) is replay:
            table.pop(replay.key, None)

    def size(self) -> int:
        # list(): the UDP lane may add an identity's table while a scrape counts.
        return sum(len(table) for table in list(self.tables.values()))
