"""The memory sink (``[[log.sinks]] type = "memory"``): the latest query records and detection events, in bounded
rings in this process, for the admin API's query log, detections and overview (``ztdns.admin``).

It is a sink like the others: fed by the feed's thread, its own bounded queue and thread, its privacy mode applied
as each record is made, so what the console shows is what that sink may keep — ``full``: client address and
certificate identity as received; ``pseudonymised``: ipcrypt pseudonyms of addresses, keyed hashes of certificate
identities and of detection keys (keys in memory only, rotated); ``aggregate``: no per-query records at all, only
the windows' counts (names asked by at least k distinct clients). Nothing is written to disk; the rings are lost
with a restart or a reload that changes ``[log]``.

Searching 100,000 records is one pass over a snapshot in plain Python (tens of milliseconds), on the caller's thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import Counter
from dataclasses import dataclass

from ztdns.observe.events import Event, QueryEvent, SecurityEvent
from ztdns.observe.formats import Who
from ztdns.observe.privacy import Aggregate, Pseudonyms
from ztdns.observe.sinks import QueueSink

DETECTIONS = 10_000  # detection events kept
WINDOWS = 288  # aggregate windows kept (a day of 5-minute windows)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several times more per record
class Record:
    """One answered query as the memory sink keeps it (client fields after the sink's privacy)."""

    seq: int  # increasing: the paging cursor
    time: float
    transport: str
    client: str
    certificate: str | None
    identity: str | None
    qname: str | None
    qtype: str | None
    decision: str
    kind: str
    policy: str | None
    rule: str | None
    rcode: str
    ede: int | None
    ede_text: str | None
    detection: str | None
    latency_ms: float


@dataclass(slots=True)
class Detection:
    """One detection event (a verdict logged): its fields after the sink's privacy."""

    seq: int
    time: float
    fields: dict[str, object]


@dataclass(slots=True)
class Filters:
    """What a query log search keeps: ``name`` is a substring of the query name, the others are exact."""

    name: str = ""
    client: str = ""
    identity: str = ""
    decision: str = ""
    since: float | None = None
    until: float | None = None

    def matches(self, record: Record) -> bool:
        if self.name and (record.qname is None or self.name not in record.qname):
            return False
        if self.client and self.client not in (record.client, record.certificate):
            return False
        if self.identity and self.identity != record.identity:
            return False
        if self.decision and self.decision != record.decision:
            return False
        if self.since is not None and record.time < self.since:
            return False
        return self.until is None or record.time <= self.until


@dataclass(slots=True)
class Page:
    records: list[Record]
    more: bool  # older matches exist: ask again with before = the last record's seq
    held: int  # records in the ring


@dataclass(slots=True)
class Timeline:
    """Counts per time bucket (oldest first) and the most blocked names and identities, over the ring."""

    start: float
    bucket_seconds: float
    queries: list[int]
    blocked: list[int]
    detections: list[int]
    top_blocked_names: list[tuple[str, int]]
    top_blocked_identities: list[tuple[str, int]]


BLOCKING = frozenset({"deny", "refuse"})


class RecentSink(QueueSink):
    kind = "memory"

    def __init__(
        self,
        name: str,
        limit: int,
        records: int,
        pseudonyms: Pseudonyms | None = None,
        aggregate: Aggregate | None = None,
    ) -> None:
        super().__init__(name, limit)
        self.privacy = "aggregate" if aggregate is not None else "pseudonymised" if pseudonyms is not None else "full"
        self.who = Who(pseudonyms)
        self.aggregate = aggregate
        self.records: collections.deque[Record] = collections.deque(maxlen=records)
        self.detections: collections.deque[Detection] = collections.deque(maxlen=DETECTIONS)
        self.windows: collections.deque[dict[str, object]] = collections.deque(maxlen=WINDOWS)
        self.lock = threading.Lock()  # the sink's thread appends, the admin API's copies
        self.seq = 0
        self.start()

    def emit(self, batch: list[Event], now: float) -> None:
        aggregate = self.aggregate
        if aggregate is not None:
            aggregate.add(event for event in batch if isinstance(event, QueryEvent))
            aggregate.add_security(event for event in batch if isinstance(event, SecurityEvent))
            if aggregate.due(now) or self.closing:
                window = aggregate.close(now)
                with self.lock:
                    self.windows.append(window)
            self.written += len(batch)
            return
        who = self.who
        pseudonyms = who.pseudonyms
        # ipcrypt-deterministic gives one pseudonym per address and key: made once per address in a batch.
        reuse = pseudonyms is not None and pseudonyms.mode == "deterministic"
        seen: dict[str, str] = {}
        made: list[Record] = []
        found: list[Detection] = []
        seq = self.seq
        for event in batch:
            if isinstance(event, QueryEvent):
                seq += 1
                answer = event.answer
                client = event.client
                if pseudonyms is None:
                    address, certificate, detection = client.address, client.certificate_identity, answer.detection
                else:
                    known = seen.get(client.address) if reuse else None
                    address = known if known is not None else who.address(event)
                    if reuse:
                        seen[client.address] = address
                    certificate, detection = who.certificate(event), who.detection(answer)
                made.append(
                    Record(
                        seq,
                        event.time,
                        str(client.transport),
                        address,
                        certificate,
                        answer.identity,
                        answer.qname,
                        answer.qtype,
                        answer.decision,
                        answer.kind,
                        answer.policy,
                        answer.rule,
                        answer.rcode,
                        answer.ede,
                        answer.ede_text,
                        detection,
                        round(event.latency * 1000, 3),
                    )
                )
            elif isinstance(event, SecurityEvent) and event.kind == "detect":
                seq += 1
                found.append(Detection(seq, event.time, who.security(event.fields)))
        with self.lock:
            self.records.extend(made)
            self.detections.extend(found)
            self.seq = seq
        self.written += len(batch)

    # -- reading (any thread) --------------------------------------------------------------------------------

    def search(self, filters: Filters, limit: int, before: int | None = None) -> Page:
        """The newest ``limit`` records matching ``filters`` older than the record ``before`` (a seq)."""
        with self.lock:
            snapshot = list(self.records)
        found: list[Record] = []
        more = False
        matches = filters.matches
        for record in reversed(snapshot):
            if before is not None and record.seq >= before:
                continue
            if matches(record):
                if len(found) == limit:
                    more = True
                    break
                found.append(record)
        return Page(found, more, len(snapshot))

    def recent_detections(self, limit: int) -> list[Detection]:
        with self.lock:
            snapshot = list(self.detections)
        return snapshot[-limit:][::-1]

    def recent_windows(self) -> list[dict[str, object]]:
        with self.lock:
            return list(self.windows)

    def timeline(self, bucket_seconds: float, buckets: int, now: float | None = None, top: int = 10) -> Timeline:
        now = time.time() if now is None else now
        start = (now // bucket_seconds + 1) * bucket_seconds - bucket_seconds * buckets
        queries, blocked, detections = [0] * buckets, [0] * buckets, [0] * buckets
        names: Counter[str] = Counter()
        identities: Counter[str] = Counter()
        with self.lock:
            records, found = list(self.records), list(self.detections)
        for record in records:
            index = int((record.time - start) // bucket_seconds)
            if 0 <= index < buckets:
                queries[index] += 1
                if record.decision in BLOCKING:
                    blocked[index] += 1
                    names[record.qname or ""] += 1
                    identities[record.identity or "(unknown)"] += 1
        for detection in found:
            index = int((detection.time - start) // bucket_seconds)
            if 0 <= index < buckets:
                detections[index] += 1
        return Timeline(
            start, bucket_seconds, queries, blocked, detections, names.most_common(top), identities.most_common(top)
        )
