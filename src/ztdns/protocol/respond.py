"""The respond stage: turn the pipeline's answer into bytes the client can take."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode

from ztdns.model import Kind
from ztdns.pipeline import Next, QueryContext
from ztdns.wire.header import CD, DO, OPCODE_MASK, QR, RA, RD, TC, UDP_PAYLOAD, edns_of, rcode_of, udp_limit
from ztdns.wire.render import MAX_SIZE, Opt, render

STREAM_MAX = MAX_SIZE


def response_to(query: dns.message.Message) -> dns.message.Message:
    """``dns.message.make_response(query)`` without the OPT record it adds, which the respond stage replaces anyway
    (it sets payload, flags and options for every answer): one OPT built, not two."""
    response = dns.message.QueryMessage(id=query.id)
    response.flags = QR | (int(query.flags) & (RD | OPCODE_MASK))
    response.question = list(query.question)
    return response


class RespondStage:
    """``max_udp_payload`` (``server.max_udp_payload``): the largest UDP answer, whatever size the client offers;
    also the payload size our OPT record advertises."""

    name = "respond"

    def __init__(self, max_udp_payload: int = UDP_PAYLOAD) -> None:
        self.max_udp_payload = max_udp_payload

    async def __call__(self, ctx: QueryContext, call_next: Next) -> None:
        await call_next(ctx)
        if ctx.drop or ctx.wire_response is not None:
            return
        query = ctx.query
        if query is None:  # the guard refused to parse it and left nothing to say
            ctx.drop = True
            return
        response = ctx.response
        if response is None:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            ctx.response = response
            if ctx.kind is None:
                ctx.kind = Kind.FAILED
        response.id = query.id
        flags = int(response.flags)
        if int(query.flags) & RD:
            flags |= RD | RA
        else:
            flags = (flags & ~RD) | RA
        flags = (flags & ~CD) | (int(query.flags) & CD)  # RFC 4035 §3.2.2: CD is copied from the query
        response.flags = flags
        rcode = rcode_of(response)  # extended rcodes (BADVERS) live in the OPT record, replaced here
        response.opt = None
        version, ednsflags = edns_of(query)
        opt = None
        if version >= 0:
            options = ctx.edns_options
            if ctx.reason is not None:
                ede = dns.edns.EDEOption(dns.edns.EDECode.make(int(ctx.reason.ede)), ctx.reason.text or None)
                options = (*options, ede)
            opt = Opt(self.max_udp_payload, (rcode >> 4) << 24 | (ednsflags & DO), options)
        elif rcode > 0xF:  # what dnspython's set_rcode does without EDNS: an OPT record only for the extended bits
            opt = Opt(dns.message.DEFAULT_EDNS_PAYLOAD, (rcode >> 4) << 24)
        limit = STREAM_MAX if ctx.client.stream else udp_limit(query.payload, self.max_udp_payload)
        full = render(response, max_size=STREAM_MAX, opt=opt)
        if ctx.store is not None:
            ctx.store.wire = full  # replays serve it whole to clients it fits
        if len(full) <= limit:
            ctx.wire_response = full
            return
        # Too big for UDP: TC=1 with the question only, so the client retries over TCP (RFC 7766).
        truncated = dns.message.QueryMessage(id=query.id)
        truncated.flags = flags | TC
        truncated.question = list(query.question)
        if version >= 0:
            ctx.wire_response = render(truncated, max_size=self.max_udp_payload, opt=opt)
        else:
            ctx.wire_response = render(truncated)
