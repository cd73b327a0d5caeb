"""The query pipeline: the stage contract, and the one place where the order of stages is declared.

A stage is an async callable ``stage(ctx, call_next)``: it may answer (set ``ctx.response`` and return
without calling ``call_next``), or pass the query on and look at the answer on the way back — as the cache does to store
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

import dns.edns
import dns.message

from ztdns.cache import CacheEntry
from ztdns.client import ClientInfo
from ztdns.outcome import Kind, Reason
from ztdns.policy import Decision, View
from ztdns.resolver import Question


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
    # How long the rendered answer may be replayed by the fast path (time.monotonic() deadline), and whether
    # replays must count TTLs down (cached upstream data) or keep them (synthesised and local answers).
    replay_until: float = 0.0
    replay_counts_down: bool = True
    cache_entry: CacheEntry | None = None  # the cached data the answer was rendered from
    replay_age: int = 0  # seconds the rendered TTLs were already counted down by
    # For answers whose source can change before replay_until (served zones): true while the replay is still right.
    replay_guard: Callable[[], bool] | None = None
    edns_options: tuple[dns.edns.Option, ...] = ()  # added to the answer's OPT record (a server cookie)
    wire_response: bytes | None = None  # the bytes sent, set by the respond stage
    full_wire_response: bytes | None = None  # the untruncated rendering, for the fast path


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
