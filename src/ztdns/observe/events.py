"""What the observe stage hands its sinks: one compact event per query, made of fields at hand.

Events are plain slots objects built on the serving thread (no formatting there); a sink (the JSON query log
today) turns them into bytes on its own thread. An :class:`Answered` is shared by every replay of one answer, so a
replayed query costs one :class:`QueryEvent` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import dns.rdata

from ztdns.model import Kind

_FROM_CACHE = frozenset({Kind.RESOLVED.value, Kind.CACHED.value})
_CACHED = Kind.CACHED.value


@dataclass(slots=True)
class Answered:
    """What is said about an answer, the same whoever asks it again (kind and rcode are the metric labels)."""

    kind: str
    rcode: str
    identity: str | None = None
    qname: str | None = None  # lower case, with the final dot
    qtype: str | None = None
    decision: str = "none"  # allow / deny / refuse / none
    policy: str | None = None
    rule: str | None = None
    ede: int | None = None
    answers: tuple[dns.rdata.Rdata, ...] = ()  # A/AAAA records of the answer section (a sink makes them text)
    cache_hit: bool = False
    upstream: str | None = None
    # The JSON members of the query log line, made by the log's writer thread the first time it needs them.
    json: str | None = None
    _replayed: Answered | None = None  # what replayed() made, kept: answers without details are shared

    def replayed(self) -> Answered:
        """What a replay of this answer says: served from cache when it came from upstream or the cache."""
        if self._replayed is not None:
            return self._replayed
        cached = self.kind in _FROM_CACHE
        self._replayed = Answered(  # not dataclasses.replace: that costs µs
            _CACHED if cached else self.kind,
            self.rcode,
            self.identity,
            self.qname,
            self.qtype,
            self.decision,
            self.policy,
            self.rule,
            self.ede,
            self.answers,
            cached,
        )
        return self._replayed


@dataclass(slots=True)
class QueryEvent:
    """One answered (or dropped) query: who asked, over what, when, and the answer's facts."""

    time: float  # time.time() when answered
    transport: str
    client: str  # source address
    certificate: str | None  # the verified client certificate's identity
    answer: Answered
    latency: float  # seconds


@dataclass(slots=True)
class SecurityEvent:
    """Something observed about clients rather than one query (a detection verdict): ``kind`` names it
    (``"detect"``), ``fields`` are its members, client-derived ones already escaped by whoever made them."""

    time: float  # time.time()
    kind: str
    fields: dict[str, object]


Event = QueryEvent | SecurityEvent


class Sink(Protocol):
    """Where events go. ``put`` runs on the serving thread (event loop or UDP lane): it must not block
    or format; a sink does its work on its own thread."""

    def put(self, event: Event) -> None: ...

    def close(self) -> None: ...
