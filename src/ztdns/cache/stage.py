"""The cache stage: answer from the message cache, store what the resolver fetched, serve stale on failure.

Stale data is served when the resolution fails, or (RFC 8767 client response timer, ``stale_client_timeout``,
1.8 s) when it has not ended by then: a black-holed upstream costs the client 1.8 s, not the resolver's whole
budget, and the resolution continues in the background to refresh the entry.

With a shared store (``[cache.shared]``), a local miss asks it before going upstream, and fetched answers go to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Protocol

import dns.flags
import dns.message

from ztdns.cache import CacheEntry, MessageCache
from ztdns.model import EDE, Kind, Question, Reason, Resolver
from ztdns.pipeline import Asked, AskedNext
from ztdns.protocol.respond import response_to
from ztdns.replay import StoreHint
from ztdns.resolver.stage import wants_ad

log = logging.getLogger(__name__)


def render(
    query: dns.message.Message, entry: CacheEntry, age: int, stale_ttl: int | None = None
) -> dns.message.Message:
    response = response_to(query)
    response.set_rcode(entry.rcode)
    if entry.authenticated and stale_ttl is None and wants_ad(query):
        response.flags |= dns.flags.AD
    response.answer, response.authority, response.additional = entry.sections(age, stale_ttl)
    return response


class SharedStore(Protocol):
    """A cache other resolvers fill too (``[cache.shared]``): asked only on a local miss, never failing."""

    async def get(self, question: Question) -> dns.message.Message | None: ...

    def put(self, question: Question, response: dns.message.Message, ttl: int) -> None: ...


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The type only: the name (and an exception's text, which may quote it) leave only through observe/.
        log.error("a background resolution failed: %s", type(task.exception()).__name__)


class CacheStage:
    name = "cache"

    def __init__(self, cache: MessageCache, resolver: Resolver | None, shared: SharedStore | None = None) -> None:
        self.cache = cache
        self.resolver = resolver
        self.shared = shared
        self._prefetches: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()  # resolutions that outlived the stale answer's timer

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        cache = self.cache
        entry, fresh = cache.lookup(ctx.question)
        if entry is not None and fresh:
            age = int(cache.clock() - entry.stored)
            ctx.response = render(ctx.query, entry, age)
            ctx.kind = Kind.CACHED
            ctx.cache_hit = True
            ctx.store = StoreHint(entry.expires, counts_down=True, entry=entry, age=age)
            if entry.reason is not None:
                ctx.reason = entry.reason
            self.maybe_prefetch(ctx.question, entry)
            return
        shared = self.shared
        if shared is not None:
            response = await shared.get(ctx.question)
            found = cache.store(ctx.question, response) if response is not None else None
            if found is not None:
                ctx.response = render(ctx.query, found, 0)
                ctx.kind = Kind.CACHED
                ctx.cache_hit = True
                ctx.store = StoreHint(found.expires, counts_down=True, entry=found)
                return
        timer = cache.config.stale_client_timeout
        if entry is not None and timer > 0:
            if not await self._resolve_within(ctx, call_next, timer):
                # RFC 8767 §5: the client response timer fired before the resolution ended: answer with what we
                # have now; the resolution goes on in the background and refreshes the entry when it succeeds.
                self._serve_stale(ctx, entry, f"resolution still running after {timer:g} s")
                return
        else:
            await self._resolve_and_store(ctx, call_next)
        if ctx.kind is Kind.FAILED and entry is not None:
            # RFC 8767: upstreams failed and we hold expired data — better an old answer than none.
            self._serve_stale(ctx, entry, ctx.reason.text if ctx.reason is not None else "")

    async def _resolve_and_store(self, ctx: Asked, call_next: AskedNext) -> None:
        before = ctx.reason
        await call_next(ctx)
        if ctx.kind is Kind.RESOLVED and ctx.response is not None:
            reason = ctx.reason if ctx.reason is not before else None  # the resolution's own, not an earlier stage's
            stored = self.cache.store(ctx.question, ctx.response, reason)
            if stored is not None:
                ctx.store = StoreHint(stored.expires, counts_down=True, entry=stored)
                if self.shared is not None:
                    self.shared.put(ctx.question, ctx.response, stored.ttl)

    async def _resolve_within(self, ctx: Asked, call_next: AskedNext, timeout: float) -> bool:
        """Resolve on a copy of CTX; True (CTX updated) if that ended within TIMEOUT seconds, else False, with
        the resolution left running (it must not write into the CTX the stale answer is rendered from)."""
        inner = dataclasses.replace(ctx)
        task = asyncio.get_running_loop().create_task(self._resolve_and_store(inner, call_next))
        self._background.add(task)  # held here: it may outlive this query (the loop keeps weak references only)
        task.add_done_callback(self._background.discard)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.add_done_callback(_log_failure)
            return False
        task.result()
        for field in dataclasses.fields(ctx):
            setattr(ctx, field.name, getattr(inner, field.name))
        return True

    def _serve_stale(self, ctx: Asked, entry: CacheEntry, failure: str) -> None:
        cache = self.cache
        cache.stale_answers += 1
        ctx.response = render(ctx.query, entry, 0, stale_ttl=cache.config.stale_answer_ttl)
        ctx.reason = Reason(EDE.STALE_ANSWER, f"stale answer; {failure}" if failure else "stale answer")
        ctx.kind = Kind.STALE
        ctx.cache_hit = True
        ctx.store = None  # never replayed: the next query tries upstream again

    def maybe_prefetch(self, question: Question, entry: CacheEntry) -> None:
        """Refresh a popular entry in the background before it expires, so hits never wait for upstream."""
        if self.resolver is None or not self.cache.due_for_prefetch(entry):
            return
        entry.prefetching = True
        task = asyncio.get_running_loop().create_task(self._prefetch(question, entry))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetches.discard)

    async def _prefetch(self, question: Question, entry: CacheEntry) -> None:
        assert self.resolver is not None
        try:
            resolution = await self.resolver.resolve(question)
            if resolution.response is not None and self.cache.store(question, resolution.response, resolution.reason):
                self.cache.prefetches += 1
        except Exception as exc:  # a failed refresh only means the next query after expiry goes upstream
            # The type only: the name (and an exception's text, which may quote it) leave only through observe/.
            log.error("a prefetch failed: %s", type(exc).__name__)
        finally:
            entry.prefetching = False
