"""The respond stage: turn the pipeline's answer into bytes the client can take."""

from __future__ import annotations

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztdns.outcome import Kind
from ztdns.pipeline import Next, QueryContext
from ztdns.protocol.render import MAX_SIZE, render

# RFC 6891 / DNS flag day 2020: advertise and honour at most 1232 bytes over UDP, avoiding fragmentation.
UDP_PAYLOAD = 1232
STREAM_MAX = MAX_SIZE


def header_only_response(query_wire: bytes, rcode: int) -> bytes:
    """A response that echoes only the header (ID, opcode, RD): for queries we cannot or will not parse."""
    flags = 0x8000 | (query_wire[2] & 0x79) << 8 | (rcode & 0xF)
    return query_wire[:2] + flags.to_bytes(2, "big") + b"\x00" * 8


def response_to(query: dns.message.Message) -> dns.message.Message:
    """``dns.message.make_response(query)`` without the OPT record it adds, which this stage replaces anyway
    (``use_edns`` below sets payload, flags, options and padding for every answer): one OPT built, not two."""
    response = dns.message.QueryMessage(id=query.id)
    response.flags = dns.flags.QR | (query.flags & dns.flags.RD)
    response.set_opcode(query.opcode())
    response.question = list(query.question)
    return response


def udp_limit(query: dns.message.Message) -> int:
    if query.edns < 0:
        return 512
    return max(512, min(query.payload, UDP_PAYLOAD))


class RespondStage:
    name = "respond"

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
        if query.flags & dns.flags.RD:
            response.flags |= dns.flags.RD | dns.flags.RA
        else:
            response.flags = (response.flags & ~dns.flags.RD) | dns.flags.RA
        rcode = response.rcode()  # extended rcodes (BADVERS) live in the OPT flags that use_edns rewrites
        if query.edns >= 0:
            options: list[dns.edns.Option] = []
            if ctx.reason is not None:
                options.append(dns.edns.EDEOption(dns.edns.EDECode.make(int(ctx.reason.ede)), ctx.reason.text or None))
            ednsflags = dns.flags.DO if query.ednsflags & dns.flags.DO else 0
            response.use_edns(0, ednsflags, UDP_PAYLOAD, options=options)
        else:
            response.use_edns(False)
        response.set_rcode(rcode)
        limit = STREAM_MAX if ctx.client.stream else udp_limit(query)
        full = render(response, max_size=STREAM_MAX)
        ctx.full_wire_response = full
        if len(full) <= limit:
            ctx.wire_response = full
            return
        # Too big for UDP: TC=1 with the question only, so the client retries over TCP (RFC 7766).
        truncated = dns.message.make_response(query)
        truncated.set_rcode(response.rcode())
        truncated.flags = response.flags | dns.flags.TC
        if query.edns >= 0:
            truncated.use_edns(0, response.ednsflags, UDP_PAYLOAD, options=list(response.options))
        else:
            truncated.use_edns(False)
        ctx.wire_response = render(truncated)
