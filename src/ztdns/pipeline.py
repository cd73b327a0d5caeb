"""The query pipeline: the stage contract, and the one place where the order of stages is declared.

A stage is an async callable ``stage(ctx, call_next)``: it may answer (set ``ctx.response`` and return without
calling ``call_next``), or pass the query on and look at the answer on the way back — as the cache does to store
what the resolver fetched, and the chain check does to see CNAME targets. Stages know nothing of sockets:
transports hand in bytes and a :class:`~ztdns.client.ClientInfo` and get bytes back.

The wire-level fast path (:mod:`ztdns.fastpath`) answers repeat questions of a known identity from
pre-rendered responses without running the stages; it only ever serves what the stages produced before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import dns.message

from ztdns.client import ClientInfo
from ztdns.outcome import Kind, Reason


@dataclass(slots=True)
class QueryContext:
    """Everything known about one query as it moves through the stages."""

    client: ClientInfo
    wire: bytes
    started: float = field(default_factory=time.monotonic)
    query: dns.message.Message | None = None
    identity: str | None = None  # the identity name the client maps to
    view: object | None = None  # the identity's compiled policy view (ztdns.policy.View)
    response: dns.message.Message | None = None
    kind: Kind | None = None
    reason: Reason | None = None  # EDE attached to the response
    policy: str | None = None  # the policy that decided, if any
    rule: str | None = None  # the rule that decided, as text ("deny:**.ads.example")
    upstream: str | None = None
    wire_response: bytes | None = None  # set by the respond stage
    # Pre-rendered response templates the fast path may reuse; set by the stage that knows it is safe.
    cacheable_until: float = 0.0


Next = Callable[[QueryContext], Awaitable[None]]


class Stage(Protocol):
    """One unit of query handling. ``name`` labels it in logs and metrics."""

    name: str

    async def __call__(self, ctx: QueryContext, call_next: Next) -> None: ...


async def _end(ctx: QueryContext) -> None:
    """Past the last stage: nothing answered. The respond stage turns that into SERVFAIL."""


def chain(stages: Sequence[Stage]) -> Next:
    """Compose stages so that each one's ``call_next`` is the rest of the list."""
    handler: Next = _end
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, call_next: Next) -> Next:
    async def run(ctx: QueryContext) -> None:
        await stage(ctx, call_next)

    return run
