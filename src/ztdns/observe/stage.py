"""The observe stage and the observer: every query becomes one event for the sinks and a metrics count.

The observer is the one exit of client-derived data: query events go to the sinks (the JSON query log), and
incidents that concern one client (a query that failed inside the pipeline) go to the ``ztdns.observe`` logger
— nowhere else in ztdns logs an address, an identity or a name.
"""

from __future__ import annotations

import logging
import time

import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype

from ztdns.client import ClientInfo
from ztdns.model import EDE, Kind, Question, Reason
from ztdns.observe.events import Answered, QueryEvent, Sink
from ztdns.observe.metrics import Metrics
from ztdns.pipeline import Next, QueryContext
from ztdns.wire.query import name_key

log = logging.getLogger(__name__)
# DNSSEC validation failures keep the logger docs/dnssec.md names; this module is still their only writer.
security_log = logging.getLogger("ztdns.dnssec")
# A failure of one name, type and code is logged at most this often (a client asking again must not flood the log).
BOGUS_LOG_INTERVAL = 60.0
_BOGUS_MEMO = 10_000

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

    def __init__(self, metrics: Metrics, sinks: tuple[Sink, ...] = ()) -> None:
        self.metrics = metrics
        self.sinks = sinks
        self._bogus_logged: dict[tuple[str, int, int], float] = {}
        # Without sinks an answer is only its labels: one shared Answered per (kind, rcode), not one per query.
        self._labels: dict[tuple[str, str], Answered] = {}

    def answered(self, ctx: QueryContext) -> Answered:
        """The facts of a pipeline's answer; only the labels when no sink will read the rest."""
        kind = (ctx.kind or Kind.FAILED).value
        rcode = _rcode(ctx)
        if not self.sinks:
            labels = self._labels.get((kind, rcode))
            if labels is None:
                labels = self._labels[kind, rcode] = Answered(kind, rcode)
            return labels
        question = ctx.question
        decision = ctx.decision
        return Answered(
            kind,
            rcode,
            identity=ctx.identity,
            qname=None if question is None else name_key(question.name) + ".",
            qtype=None if question is None else dns.rdatatype.to_text(dns.rdatatype.RdataType.make(question.rdtype)),
            decision=_decision(ctx),
            policy=None if decision is None else decision.policy,
            rule=None if decision is None else decision.rule,
            ede=None if ctx.reason is None else int(ctx.reason.ede),
            answers=_addresses(ctx.response),
            cache_hit=ctx.cache_hit,
            upstream=ctx.upstream,
        )

    def record(self, ctx: QueryContext) -> None:
        answered = self.answered(ctx)
        if ctx.store is not None:
            ctx.store.answered = answered  # what replays of this answer will say
        self.record_answer(answered, ctx.client, ctx.started)
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

    def record_answer(self, answered: Answered, client: ClientInfo, started: float) -> None:
        """Count one answer and hand its event to the sinks; ``started`` is its time.monotonic() start."""
        latency = time.monotonic() - started
        transport = client.transport  # a StrEnum: its own label
        self.metrics.count(transport, answered.kind, answered.rcode, latency)
        if self.sinks:
            event = QueryEvent(time.time(), transport, client.address, client.certificate_identity, answered, latency)
            for sink in self.sinks:
                sink.put(event)

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
