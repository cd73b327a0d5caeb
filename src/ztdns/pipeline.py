"""The query pipeline: the stage contract, and the contexts a query's facts travel in.

A stage is an async callable ``stage(ctx, call_next)``: it may answer (set ``ctx.response`` and return
without calling ``call_next``), or pass the query on and look at the answer on the way back — as the cache does to store
what the resolver fetched, and the chain check does to see CNAME targets. Stages know nothing of sockets:
transports hand in bytes and a :class:`~ztdns.client.ClientInfo` and get bytes back. The order of the stages is
declared once, in ``ztdns.handler.build_stages``.

Two context types: the outer stages (observe, respond, guard) see a :class:`QueryContext`, which may hold
garbage; the guard hands the stages after it the same object as an :class:`Asked`, whose parsed query and
question are always set. This module sits below every stage: it imports the
stages' types only for type checking.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import dns.edns
import dns.message

from ztdns.client import ClientInfo
from ztdns.model import Kind, Question, Reason

if TYPE_CHECKING:
    from ztdns.policy import Decision, View
    from ztdns.replay import StoreHint


@dataclass(slots=True)
class QueryContext:
    """Everything known about one query as it moves through the stages."""

    client: ClientInfo
    wire: bytes
    started: float = field(default_factory=time.monotonic)
    query: dns.message.Message | None = None  # set by the guard stage
    question: Question | None = None  # set by the guard stage
    identity: str | None = None  # the identity name the client maps to
    identity_how: str | None = None  # why: "network 10.0.0.0/8", "certificate spiffe://…"
    view: View | None = None  # the identity's compiled policies
    response: dns.message.Message | None = None
    kind: Kind | None = None
    reason: Reason | None = None  # EDE attached to the response
    decision: Decision | None = None  # the policy decision that decided, if any
    decided_name: str | None = None  # the name that decision was made on (the question or a CNAME target)
    upstream: str | None = None
    drop: bool = False  # send nothing (responses, garbage without a header)
    cache_hit: bool = False
    store: StoreHint | None = None  # may the answer be replayed, and how (None: never)
    edns_options: tuple[dns.edns.Option, ...] = ()  # added to the answer's OPT record (a server cookie)
    detection: str | None = None  # the text of the detection verdict this query met (logged, enforced or not)
    wire_response: bytes | None = None  # the bytes sent, set by the respond stage


class Asked(QueryContext):
    """A query the guard let through: one question of class IN, parsed — ``query`` and ``question`` are set.

    The same object as the context the outer stages hold, re-classed by :meth:`narrow` (no fields of its own, so
    the layout is the same): the stages after the guard see the fields set without a second context per query.
    """

    __slots__ = ()
    query: dns.message.Message
    question: Question

    @staticmethod
    def narrow(ctx: QueryContext, query: dns.message.Message, question: Question) -> Asked:
        ctx.query = query
        ctx.question = question
        ctx.__class__ = Asked
        assert isinstance(ctx, Asked)  # for the type checker; true by the line above
        return ctx


C = TypeVar("C", bound=QueryContext)
Next = Callable[[QueryContext], Awaitable[None]]
AskedNext = Callable[[Asked], Awaitable[None]]


class Stage(Protocol[C]):
    """One unit of query handling. ``name`` labels it in logs and metrics."""

    name: str

    async def __call__(self, ctx: C, call_next: Callable[[C], Awaitable[None]]) -> None: ...


async def _end(ctx: QueryContext) -> None:
    """Past the last stage: nothing answered. The respond stage turns that into SERVFAIL."""


def chain(stages: Sequence[Stage[C]]) -> Callable[[C], Awaitable[None]]:
    """Compose stages so that each one's ``call_next`` is the rest of the list."""
    handler: Callable[[C], Awaitable[None]] = _end
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage[C], call_next: Callable[[C], Awaitable[None]]) -> Callable[[C], Awaitable[None]]:
    async def run(ctx: C) -> None:
        await stage(ctx, call_next)

    return run
