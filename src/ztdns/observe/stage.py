"""The observe stage and the observer: every query becomes one event for the sinks and a metrics count.

The observer is the one exit of client-derived data: query events go to the sinks (the JSON query log), and
incidents that concern one client (a query that failed inside the pipeline) go to the ``ztdns.observe`` logger
— nowhere else in ztdns logs an address, an identity or a name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TypeVar

import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype

from ztdns.client import ClientInfo
from ztdns.model import EDE, Kind, Question, Reason
from ztdns.observe.events import Answered, SecurityEvent, UpstreamEvent
from ztdns.observe.metrics import Metrics
from ztdns.observe.sinks import Feed
from ztdns.pipeline import Next, QueryContext
from ztdns.wire.header import AD
from ztdns.wire.query import name_key

log = logging.getLogger(__name__)
Peer = TypeVar("Peer")  # whatever a transport names a reply's destination by (UDP: the sockaddr bytes)
# DNSSEC validation failures keep the logger docs/dnssec.md names; this module is still their only writer.
security_log = logging.getLogger("ztdns.dnssec")
# A failure of one name, type and code is logged at most this often (a client asking again must not flood the log).
BOGUS_LOG_INTERVAL = 60.0
_BOGUS_MEMO = 10_000
_LABELS_MEMO = 10_000  # label sets are bounded by the config (identities × policies × …); this only guards it

# The header's four rcode bits as log text, made once (dnspython's enum lookups cost µs a query).
_RCODE_TEXT = tuple(dns.rcode.to_text(dns.rcode.Rcode.make(value)) for value in range(16))


def _rcode(ctx: QueryContext) -> str:
    wire = ctx.wire_response
    if wire is not None and len(wire) >= 4:
        return _RCODE_TEXT[wire[3] & 0xF]
    return "DROPPED"


def _decision(ctx: QueryContext) -> str:
    if ctx.kind is Kind.PROHIBITED:
        return "refuse"
    if ctx.decision is None:
        return "none"
    return "allow" if ctx.decision.allowed and ctx.kind is not Kind.BLOCKED else "deny"


def _addresses(response: dns.message.Message | None) -> tuple[dns.rdata.Rdata, ...]:
    if response is None:
        return ()
    return tuple(
        rdata for rrset in response.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rdata in rrset
    )


class Observer:
    """Counts metrics and hands events to the sinks, for pipeline runs and replays alike."""

    def __init__(self, metrics: Metrics, feed: Feed | None = None, validating: bool = False) -> None:
        self.metrics = metrics
        self.feed = feed
        self.validating = validating  # DNSSEC status of answers: "off" when nothing validates
        self._bogus_logged: dict[tuple[str, int, int], float] = {}
        # Without sinks an answer is only its metric labels: one shared Answered per label set, not one per query.
        self._labels: dict[tuple[str, str, str | None, str | None, str, str, int | None], Answered] = {}

    def answered(self, ctx: QueryContext) -> Answered:
        """The facts of a pipeline's answer; only the labels when no sink will read the rest."""
        kind = (ctx.kind or Kind.FAILED).value
        rcode = _rcode(ctx)
        question = ctx.question
        decision = ctx.decision
        if self.feed is None:
            policy = None if decision is None else decision.policy
            ede = None if ctx.reason is None else int(ctx.reason.ede)
            key = (kind, rcode, ctx.identity, policy, _decision(ctx), self._dnssec(ctx), ede)
            labels = self._labels.get(key)
            if labels is None:
                if len(self._labels) >= _LABELS_MEMO:
                    self._labels.clear()
                labels = self._labels[key] = Answered(
                    kind, rcode, identity=key[2], decision=key[4], policy=policy, ede=ede, dnssec=key[5]
                )
            return labels
        response = ctx.response
        reason = ctx.reason
        return Answered(
            kind,
            rcode,
            identity=ctx.identity,
            qname=None if question is None else name_key(question.name) + ".",
            qtype=None if question is None else dns.rdatatype.to_text(dns.rdatatype.RdataType.make(question.rdtype)),
            decision=_decision(ctx),
            policy=None if decision is None else decision.policy,
            rule=None if decision is None else decision.rule,
            ede=None if reason is None else int(reason.ede),
            answers=_addresses(response),
            cache_hit=ctx.cache_hit,
            upstream=ctx.upstream,
            ede_text=None if reason is None else reason.text,
            records=() if response is None else tuple(response.answer),
            dnssec=self._dnssec(ctx),
            detection=ctx.detection,
        )

    def _dnssec(self, ctx: QueryContext) -> str:
        if ctx.kind is Kind.BOGUS:
            return "bogus"
        if not self.validating:
            return "off"
        wire = ctx.wire_response
        return "secure" if wire is not None and len(wire) >= 4 and wire[3] & AD else "insecure"

    def record(self, ctx: QueryContext) -> None:
        answered = self.answered(ctx)
        if ctx.store is not None:
            ctx.store.answered = answered  # what replays of this answer will say
        self.record_answer(answered, ctx.client, ctx.started, ctx.wire, ctx.wire_response)
        if ctx.kind is Kind.BOGUS and ctx.question is not None:
            self._bogus(ctx.question, ctx.reason)

    def _bogus(self, question: Question, reason: Reason | None) -> None:
        """A DNSSEC validation failure is a security event (docs/dnssec.md), logged whether or not the query
        log is on; the validator counts them by EDE code."""
        ede = int(reason.ede) if reason is not None else int(EDE.DNSSEC_BOGUS)
        key = (str(question.name).lower(), question.rdtype, ede)
        now = time.monotonic()
        logged = self._bogus_logged
        if now - logged.get(key, -BOGUS_LOG_INTERVAL) < BOGUS_LOG_INTERVAL:
            return
        if len(logged) >= _BOGUS_MEMO:
            logged.clear()
        logged[key] = now
        qtype = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(question.rdtype))
        text = reason.text if reason is not None else ""
        security_log.warning(
            "DNSSEC validation failed",
            extra={"event": "dnssec_bogus", "qname": str(question.name), "qtype": qtype, "ede": ede, "text": text},
        )

    def event(self, kind: str, fields: dict[str, object]) -> None:
        """A security event (a detection verdict) for the sinks: the query log writes it as ``"event": kind``."""
        feed = self.feed
        if feed is not None:
            feed.ring.add_event(SecurityEvent(time.time(), kind, fields))

    def record_answer(
        self, answered: Answered, client: ClientInfo, started: float, query: bytes, response: bytes | None
    ) -> None:
        """Count one answer and hand its record to the sinks; ``started`` is its time.monotonic() start, ``query``
        and ``response`` the bytes received and sent (copied into the feed's ring: sinks read them on their
        threads)."""
        latency = time.monotonic() - started
        transport = client.transport  # a StrEnum: its own label
        self.metrics.count_answer(transport, answered.labels or answered.metric_labels(), latency)
        feed = self.feed
        if feed is not None:
            feed.add(time.time(), latency, client, answered, query, response)

    def record_answers(
        self, answers: Iterable[tuple[ClientInfo, list[tuple[Answered, bytes, bytes, Peer]]]], started: float
    ) -> None:
        """:meth:`record_answer` for answers that started together (a UDP lane's batch), by client: each
        ``(answered, query, response, _)`` gives the same record, with one clock read and one count per label set
        for them all."""
        latency = time.monotonic() - started
        counts: dict[tuple[str, tuple[str, ...]], int] = {}
        for client, replies in answers:
            transport = client.transport
            counted: Answered | None = None
            run = 0
            for answered, _, _, _ in replies:
                if answered is not counted:  # a batch is mostly runs of one replay: one look-up per run
                    if counted is not None:
                        key = (transport, counted.labels or counted.metric_labels())
                        counts[key] = counts.get(key, 0) + run
                    counted, run = answered, 0
                run += 1
            if counted is not None:
                key = (transport, counted.labels or counted.metric_labels())
                counts[key] = counts.get(key, 0) + run
        count_answer = self.metrics.count_answer
        for (by_transport, labels), count in counts.items():
            count_answer(by_transport, labels, latency, count)
        feed = self.feed
        if feed is not None:
            add_replies = feed.ring.add_replies
            wall = time.time()
            for client, replies in answers:
                add_replies(wall, latency, client, replies)

    def count_answers(self, transport: str, counted: Iterable[tuple[tuple[str, ...], int]], latency: float) -> None:
        """Count answers that started together by their metric labels (a UDP lane's replays answered in C, which
        added their records to the ring itself): ``counted`` is (labels, answers) per label set."""
        count_answer = self.metrics.count_answer
        for labels, count in counted:
            count_answer(transport, labels, latency, count)

    def upstream(
        self, transport: str, host: str, port: int, query: bytes, reply: dns.message.Message | bytes, sent: float
    ) -> None:
        """An exchange with an upstream, for the sinks that carry upstream traffic (dnstap)."""
        feed = self.feed
        if feed is not None:
            feed.ring.add_event(UpstreamEvent(time.time(), sent, transport, host, port, query, reply))

    def failed(self, what: str, client: ClientInfo) -> None:
        """An internal error while answering ``client`` (call from an ``except`` block: the traceback goes too)."""
        log.exception("%s (query from %s)", what, client.address)


class ObserveStage:
    """Outermost stage, so it sees the final outcome of every query — including dropped ones."""

    name = "observe"

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    async def __call__(self, ctx: QueryContext, call_next: Next) -> None:
        try:
            await call_next(ctx)
        finally:
            self.observer.record(ctx)
