"""The resolve stage: ask the configured resolver (forwarder, recursion) for what nothing else answered."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode

from ztdns.model import EDE, Kind, Reason, Resolver
from ztdns.pipeline import Asked, AskedNext
from ztdns.protocol.respond import response_to
from ztdns.wire.header import AD, DO, RD, edns_of, rcode_of


def wants_ad(query: dns.message.Message) -> bool:
    """RFC 6840 §5.8: set AD only for clients that showed they understand it (DO or AD in the query)."""
    return bool(edns_of(query)[1] & DO or int(query.flags) & AD)


def copy_answer(query: dns.message.Message, upstream: dns.message.Message) -> dns.message.Message:
    """The client's response carrying the upstream's rcode, sections and validated AD (never its other flags).

    The sections are new lists of the same RRsets: resolvers share RRsets between their answers and caches,
    and nothing changes one in place (the message cache copies what it clamps; TTLs count down in copies)."""
    response = response_to(query)
    rcode = rcode_of(upstream)
    if rcode > 0xF:
        response.set_rcode(dns.rcode.Rcode.make(rcode))  # the extended bits need an OPT record
    else:
        response.flags |= rcode
    if int(upstream.flags) & AD and wants_ad(query):
        response.flags |= AD
    response.answer = list(upstream.answer)
    response.authority = list(upstream.authority)
    response.additional = list(upstream.additional)
    return response


class ResolveStage:
    name = "resolve"

    def __init__(self, resolver: Resolver | None, recurse_rd0: bool = False) -> None:
        self.resolver = resolver
        # resolver.answer_rd0 = "recurse": resolve for RD=0 queries too; "cache-only" (Unbound's way): what
        # local zones, served zones and the cache do not answer is refused to them.
        self.recurse_rd0 = recurse_rd0

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        if self.resolver is None:
            _refuse(ctx, "no upstream configured (resolver.mode = none)")
            return
        if not self.recurse_rd0 and not int(ctx.query.flags) & RD:
            _refuse(ctx, "recursion not desired (RD=0) and not in the cache")
            return
        resolution = await self.resolver.resolve(ctx.question)
        ctx.upstream = resolution.upstream
        if resolution.response is None:
            ctx.kind = Kind.FAILED
            ctx.reason = resolution.reason or Reason(EDE.NO_REACHABLE_AUTHORITY)
            return
        ctx.response = copy_answer(ctx.query, resolution.response)
        ctx.kind = Kind.RESOLVED
        if resolution.reason is not None:  # validation failed (bogus) or downgraded (EDE 1/2, insecure)
            ctx.reason = resolution.reason
        if resolution.security == "bogus":
            ctx.kind = Kind.BOGUS
        elif rcode_of(resolution.response) == dns.rcode.SERVFAIL:
            ctx.kind = Kind.FAILED


def _refuse(ctx: Asked, text: str) -> None:
    response = response_to(ctx.query)
    response.set_rcode(dns.rcode.REFUSED)
    ctx.response = response
    ctx.kind = Kind.FAILED
    ctx.reason = Reason(EDE.NOT_AUTHORITATIVE, text)
