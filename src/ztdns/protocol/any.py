"""RFC 8482: answer ANY with one small synthesised HINFO instead of everything, denying amplification."""

from __future__ import annotations

import time

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztdns.model import Kind
from ztdns.pipeline import Asked, AskedNext
from ztdns.replay import StoreHint

ANY_TTL = 3600


class MinimalAnyStage:
    name = "any"

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        if ctx.question.rdtype != dns.rdatatype.ANY:
            await call_next(ctx)
            return
        response = dns.message.make_response(ctx.query)
        response.answer.append(
            dns.rrset.from_text(ctx.question.name, ANY_TTL, dns.rdataclass.IN, dns.rdatatype.HINFO, '"RFC8482" ""')
        )
        ctx.response = response
        ctx.kind = Kind.SPECIAL
        ctx.store = StoreHint(time.monotonic() + ANY_TTL)
