"""The guard stage: only well-formed standard queries of class IN go further, as an :class:`~ztdns.pipeline.Asked`."""

from __future__ import annotations

import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from ztdns.model import Kind, Question
from ztdns.pipeline import Asked, AskedNext, Next, QueryContext
from ztdns.wire.header import CD, DO, edns_of, header_only, opcode_of
from ztdns.wire.parse import parse_message

# Meta and transfer types a resolver does not answer (RFC 6895 §3.1); ANY is answered per RFC 8482 later.
_REFUSED_TYPES = frozenset(
    {dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA, dns.rdatatype.MAILB, dns.rdatatype.OPT}
)


class GuardStage:
    """Lets through what the stages after it can take, to ``inner`` (the chain of those stages): its own
    ``call_next`` is never called."""

    name = "guard"

    def __init__(self, inner: AskedNext) -> None:
        self.inner = inner

    async def __call__(self, ctx: QueryContext, call_next: Next) -> None:
        wire = ctx.wire
        if len(wire) < 12 or wire[2] & 0x80:  # no header to answer to, or a response: never answer those
            ctx.drop = True
            ctx.kind = Kind.INVALID
            return
        try:
            query = parse_message(wire)
        except Exception:  # any parse failure of untrusted bytes is the client's error, never ours
            ctx.kind = Kind.INVALID
            ctx.wire_response = header_only(wire, dns.rcode.FORMERR)
            return
        if opcode_of(query) != dns.opcode.QUERY:
            ctx.kind = Kind.INVALID
            ctx.wire_response = header_only(wire, dns.rcode.NOTIMP)
            return
        if len(query.question) != 1:
            ctx.kind = Kind.INVALID
            ctx.wire_response = header_only(wire, dns.rcode.FORMERR)
            return
        ctx.query = query
        version, ednsflags = edns_of(query)
        if version > 0:
            ctx.kind = Kind.INVALID
            ctx.response = dns.message.make_response(query)
            ctx.response.set_rcode(dns.rcode.BADVERS)
            return
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or question.rdtype in _REFUSED_TYPES:
            ctx.kind = Kind.INVALID
            ctx.response = dns.message.make_response(query)
            ctx.response.set_rcode(dns.rcode.REFUSED)
            return
        asked = Question(
            name=question.name,
            rdtype=question.rdtype,
            rdclass=question.rdclass,
            dnssec_ok=bool(ednsflags & DO),
            checking_disabled=bool(int(query.flags) & CD),
        )
        await self.inner(Asked.narrow(ctx, query, asked))
