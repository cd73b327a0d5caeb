"""What the observe stage hands its sinks: one compact event per query, made of fields at hand.

The serving thread copies a record per query into the feed's ring (``observe.ring``, ``observe.sinks.Feed``); the
sinks format the records on their own threads, the native log and dnstap straight from the ring's chunks, the others
from the :class:`QueryEvent` they make of them. An :class:`Answered` is shared by every replay of one answer, so a
replayed query costs one record and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.message
import dns.rdata
import dns.rrset

from ztdns.client import ClientInfo
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
    ede_text: str | None = None
    records: tuple[dns.rrset.RRset, ...] = ()  # the whole answer section (CNAME chain included)
    dnssec: str = "off"  # secure / insecure / bogus / off (not validating)
    detection: str | None = None  # the detection verdict this query met, if any
    # The metric labels (kind, rcode, identity, policy, decision, DNSSEC result, EDE of a bogus answer), made once.
    labels: tuple[str, str, str, str, str, str, str] | None = None
    # The JSON members of the query log line, made by the log's writer thread the first time it needs them.
    json: str | None = None
    json_details: str | None = None
    _replayed: Answered | None = None  # what replayed() made, kept: answers without details are shared

    def metric_labels(self) -> tuple[str, str, str, str, str, str, str]:
        labels = self.labels
        if labels is None:
            bogus = self.dnssec == "bogus" and self.ede is not None
            labels = self.labels = (
                self.kind,
                self.rcode,
                self.identity or "",
                self.policy or "",
                self.decision,
                self.dnssec,
                str(self.ede) if bogus else "",
            )
        return labels

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
            None,
            self.ede_text,
            self.records,
            self.dnssec,
            None,  # a verdict met by the first query is not one met by its replays
        )
        return self._replayed


@dataclass(slots=True)
class QueryEvent:
    """One answered (or dropped) query: who asked (address, port, transport, certificate), when, the query and
    answer bytes as sent (shared, not copied: dnstap carries them, the formats read the ID and size), and the
    answer's facts."""

    time: float  # time.time() when answered
    client: ClientInfo
    answer: Answered
    latency: float  # seconds
    query: bytes
    response: bytes | None  # None: dropped


@dataclass(slots=True)
class SecurityEvent:
    """Something observed about clients rather than one query (a detection verdict): ``kind`` names it
    (``"detect"``), ``fields`` are its members, client-derived ones already escaped by whoever made them."""

    time: float  # time.time()
    kind: str
    fields: dict[str, object]


@dataclass(slots=True)
class UpstreamEvent:
    """One exchange with an upstream (a cache miss forwarded, or a query of recursion to an authoritative server):
    dnstap's RESOLVER_QUERY and RESOLVER_RESPONSE."""

    time: float  # time.time() when the reply arrived
    sent: float  # time.time() when the query was sent
    transport: str  # udp, tcp, dot, doh, doq
    host: str
    port: int
    query: bytes
    reply: dns.message.Message | bytes  # as received (recursion), or parsed and encoded on the sink's thread


Event = QueryEvent | SecurityEvent | UpstreamEvent

# A query as a tuple: (time.time(), client, answered, latency, query bytes, response bytes), the fields of a QueryEvent
# in order: what the pure-Python ring keeps (``observe.ring.PyRecords``) and a chunk of the C ring reads as
# (``Chunk.items``). Sinks that format from it (``QueueSink.raw``) read it as it is; the others make a QueryEvent of it.
RawQuery = tuple[float, ClientInfo, Answered, float, bytes, "bytes | None"]
# What a batch holds, read as tuples and events.
Item = Event | RawQuery
