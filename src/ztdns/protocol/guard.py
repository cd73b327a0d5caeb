"""The guard stage: only well-formed standard queries of class IN for data types go further, as an
:class:`~ztdns.pipeline.Asked`.

Meta query types (RFC 6895 §3.1) are answered here and never forwarded (an upstream's FORMERR would count against
its health): see ``_META_RCODES``. A TSIG-signed query gets NOTAUTH with an unsigned TSIG whose error is BADKEY
(RFC 8945 §5.2.2): this resolver holds no TSIG keys, so no key is known.
"""

from __future__ import annotations

import struct
import time

import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG

from ztdns.model import Kind, Question
from ztdns.pipeline import Asked, AskedNext, Next, QueryContext
from ztdns.wire.header import CD, DO, edns_of, header_only
from ztdns.wire.parse import parse_message

# Meta-TYPEs and QTYPEs other than ANY (RFC 6895 §3.1; ANY is answered per RFC 8482 later), with the answer.
# Transfers are not for resolver clients: REFUSED. TSIG and OPT records exist only in a message's additional
# section, never as data to ask for: FORMERR (as BIND). TKEY asks for key agreement (RFC 2930), MAILA and MAILB
# are obsolete, and unassigned meta types are unknown operations: NOTIMP.
_META_RCODES: dict[int, dns.rcode.Rcode] = {
    **{rdtype: dns.rcode.NOTIMP for rdtype in range(128, 249)},
    dns.rdatatype.TKEY: dns.rcode.NOTIMP,
    dns.rdatatype.TSIG: dns.rcode.FORMERR,
    dns.rdatatype.OPT: dns.rcode.FORMERR,
    dns.rdatatype.IXFR: dns.rcode.REFUSED,
    dns.rdatatype.AXFR: dns.rcode.REFUSED,
    dns.rdatatype.MAILB: dns.rcode.NOTIMP,
    dns.rdatatype.MAILA: dns.rcode.NOTIMP,
}
_TSIG_RR = struct.Struct("!HHIH")
# Opcodes with a meaning (RFC 6895 §2.2, RFC 8490): QUERY, IQUERY (retired), STATUS, NOTIFY, UPDATE, DSO.
_KNOWN_OPCODES = frozenset({0, 1, 2, 4, 5, 6})


def tsig_badkey_response(wire: bytes) -> bytes:
    """The answer to a TSIG-signed query from a server without that key (RFC 8945 §5.2.2): NOTAUTH, and an
    unsigned TSIG (empty MAC, §5.3.2) with error BADKEY. FORMERR when the message does not parse even unverified."""
    try:
        query = dns.message.from_wire(wire, keyring=False)  # read the TSIG, verify nothing
    except Exception:
        return header_only(wire, dns.rcode.FORMERR)
    if query.tsig is None:
        return header_only(wire, dns.rcode.FORMERR)
    response = dns.message.make_response(query)  # unsigned: the query's keyring is False
    response.set_rcode(dns.rcode.NOTAUTH)
    signed = query.tsig[0]
    tsig = dns.rdtypes.ANY.TSIG.TSIG(
        dns.rdataclass.ANY,
        dns.rdatatype.TSIG,
        signed.algorithm,
        int(time.time()),
        signed.fudge,
        b"",
        query.id,
        dns.rcode.BADKEY,
        b"",
    )
    rdata, owner = tsig.to_wire(), query.tsig.name.to_wire()
    assert rdata is not None and owner is not None  # without a file to write to, both return bytes
    out = bytearray(response.to_wire())
    out[10:12] = (int.from_bytes(out[10:12], "big") + 1).to_bytes(2, "big")  # ARCOUNT: the TSIG comes last
    out += owner + _TSIG_RR.pack(dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata
    return bytes(out)


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
        opcode = (wire[2] >> 3) & 0xF
        if opcode != dns.opcode.QUERY:  # before parsing: other opcodes' messages have other layouts
            ctx.kind = Kind.INVALID
            # An opcode we do not know defines its own header bits: none is copied (genreport's opcodeflg).
            ctx.wire_response = header_only(wire, dns.rcode.NOTIMP, copy_rd=opcode in _KNOWN_OPCODES)
            return
        try:
            query = parse_message(wire)
        except dns.message.UnknownTSIGKey:
            ctx.kind = Kind.INVALID
            ctx.wire_response = tsig_badkey_response(wire)
            return
        except Exception:  # any parse failure of untrusted bytes is the client's error, never ours
            ctx.kind = Kind.INVALID
            ctx.wire_response = header_only(wire, dns.rcode.FORMERR)
            return
        version, ednsflags = edns_of(query)
        if len(query.question) != 1:
            ctx.kind = Kind.INVALID
            ctx.wire_response = header_only(wire, dns.rcode.FORMERR, edns=version == 0)
            return
        ctx.query = query
        if version > 0:
            ctx.kind = Kind.INVALID
            ctx.response = dns.message.make_response(query)
            ctx.response.set_rcode(dns.rcode.BADVERS)
            return
        question = query.question[0]
        refusal = dns.rcode.REFUSED if question.rdclass != dns.rdataclass.IN else _META_RCODES.get(question.rdtype)
        if refusal is not None:
            ctx.kind = Kind.INVALID
            ctx.response = dns.message.make_response(query)
            ctx.response.set_rcode(refusal)
            return
        asked = Question(
            name=question.name,
            rdtype=question.rdtype,
            rdclass=question.rdclass,
            dnssec_ok=bool(ednsflags & DO),
            checking_disabled=bool(int(query.flags) & CD),
        )
        await self.inner(Asked.narrow(ctx, query, asked))
