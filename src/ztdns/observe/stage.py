"""The observe stage and the observer: every answered query becomes one log line and a metrics count."""

from __future__ import annotations

import json
import time

import dns.rcode
import dns.rdatatype

from ztdns.client import ClientInfo
from ztdns.fastpath import Replay
from ztdns.observe.metrics import Metrics
from ztdns.observe.querylog import Clock, QueryLog
from ztdns.outcome import Kind
from ztdns.pipeline import Next, QueryContext
from ztdns.policy.stage import name_key


def _decision(ctx: QueryContext) -> str:
    if ctx.kind is Kind.PROHIBITED:
        return "refuse"
    if ctx.decision is None:
        return "none"
    return "allow" if ctx.decision.allowed and ctx.kind is not Kind.BLOCKED else "deny"


def _answers(ctx: QueryContext) -> list[str]:
    if ctx.response is None:
        return []
    return [
        rdata.to_text()
        for rrset in ctx.response.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in rrset
    ]


# The header's four rcode bits as log text, made once (dnspython's enum lookups cost µs a query).
_RCODE_TEXT = tuple(dns.rcode.to_text(dns.rcode.Rcode.make(value)) for value in range(16))


def _rcode(ctx: QueryContext) -> str:
    wire = ctx.wire_response
    if wire is not None and len(wire) >= 4:
        return _RCODE_TEXT[wire[3] & 0xF]
    return "DROPPED"


class Observer:
    """Builds query log lines and counts metrics, for pipeline runs and fast-path replays alike."""

    def __init__(self, metrics: Metrics, querylog: QueryLog | None) -> None:
        self.metrics = metrics
        self.querylog = querylog
        self.clock = Clock()

    def record(self, ctx: QueryContext) -> None:
        latency = time.monotonic() - ctx.started
        kind = (ctx.kind or Kind.FAILED).value
        rcode = _rcode(ctx)
        self.metrics.count(ctx.client.transport.value, kind, rcode, latency)
        if self.querylog is None:
            return
        question = ctx.question
        qname = name_key(question.name) + "." if question else None
        qtype = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(question.rdtype)) if question else None
        client = ctx.client
        head = json.dumps(
            {
                "time": self.clock.now(),
                "transport": client.transport.value,
                "client": client.address,
                "certificate": client.certificate_identity,
            }
        )
        body = json.dumps(
            {
                "identity": ctx.identity,
                "qname": qname,
                "qtype": qtype,
                "decision": _decision(ctx),
                "kind": kind,
                "policy": ctx.decision.policy if ctx.decision else None,
                "rule": ctx.decision.rule if ctx.decision else None,
                "rcode": rcode,
                "ede": int(ctx.reason.ede) if ctx.reason else None,
                "answers": _answers(ctx),
                "cache_hit": ctx.cache_hit,
                "upstream": ctx.upstream,
                "latency_ms": round(latency * 1000, 3),
            }
        )
        self.querylog.write(head[:-1] + ", " + body[1:])

    def event(self, kind: str, fields: dict[str, object]) -> None:
        """A security event (a detection verdict) as one line of the query log stream: ``"event": kind``."""
        if self.querylog is not None:
            self.querylog.write(json.dumps({"time": self.clock.now(), "event": kind, **fields}))

    def replay_fragment(self, ctx: QueryContext) -> tuple[str, str, str]:
        """(log fragment, kind, rcode) for fast-path replays of this answer: all fields that do not change."""
        kind = Kind.CACHED if ctx.kind in (Kind.RESOLVED, Kind.CACHED) else (ctx.kind or Kind.FAILED)
        if self.querylog is None:  # nothing will write it: replays live no longer than this observer's runtime
            return "", kind.value, _rcode(ctx)
        question = ctx.question
        fragment = json.dumps(
            {
                "identity": ctx.identity,
                "qname": name_key(question.name) + "." if question else None,
                "qtype": dns.rdatatype.to_text(dns.rdatatype.RdataType.make(question.rdtype)) if question else None,
                "decision": _decision(ctx),
                "kind": kind.value,
                "policy": ctx.decision.policy if ctx.decision else None,
                "rule": ctx.decision.rule if ctx.decision else None,
                "rcode": _rcode(ctx),
                "ede": int(ctx.reason.ede) if ctx.reason else None,
                "answers": _answers(ctx),
                "cache_hit": kind is Kind.CACHED,
                "upstream": None,
            }
        )
        return fragment[1:-1], kind.value, _rcode(ctx)

    def record_replay(self, replay: Replay, client: ClientInfo, started: float) -> None:
        latency = time.monotonic() - started
        transport = client.transport
        self.metrics.count(transport, replay.kind, replay.rcode, latency)
        if self.querylog is not None:
            # The certificate identity is per client, like the address: identities matched by prefix are shared.
            certificate = client.certificate_identity
            proven = "null" if certificate is None else json.dumps(certificate)
            self.querylog.write(
                f'{{"time": "{self.clock.now()}", "transport": "{transport}", "client": {json.dumps(client.address)}, '
                f'"certificate": {proven}, {replay.log_fragment}, "latency_ms": {latency * 1000:.3f}}}'
            )


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
