"""A query's header, question and OPT read by hand for the hot path (replays), without building objects.

dnspython is the domain model everywhere else; here, on every query, we only need to know enough to find a
pre-rendered answer: the question bytes, the flags that change the answer, and the client's EDNS payload size.
Anything unusual returns None and the full pipeline (with dnspython) handles it.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.name

# Variant bits: everything in a query other than the question that changes the bytes of the answer.
VARIANT_RD = 1
VARIANT_CD = 2
VARIANT_EDNS = 4
VARIANT_DO = 8
VARIANT_AD = 16  # RFC 6840 §5.8: a client setting AD gets AD on secure answers even without DO
VARIANT_SCOPE = 32  # the grant-scope option (ztdns.wire.grant_scope): an agent's query gets the scope in its answer

_OPT = 41


@dataclass(slots=True)
class WireQuery:
    """The parts of a plain query the fast path needs. Offsets are into the query wire."""

    name_end: int  # offset just past the question name
    question_end: int  # offset just past QTYPE/QCLASS
    qtype: int
    key: bytes  # lower-cased question + variant byte: the same for every query that gets the same answer
    variant: int
    max_size: int  # largest UDP response the client accepts


def parse_query(wire: bytes) -> WireQuery | None:
    """Parse a standard query with one question and at most an OPT record; None for anything else."""
    length = len(wire)
    # QR=0, OPCODE=0 (QUERY), QDCOUNT=1, ANCOUNT=0, NSCOUNT=0, ARCOUNT 0 or 1.
    if length < 17 or wire[2] & 0xF8 or wire[4:10] != b"\x00\x01\x00\x00\x00\x00" or wire[10]:
        return None
    arcount = wire[11]
    offset = 12
    label = wire[offset]
    while label:
        if label > 63:  # compression in a question, or an extended label type: not for the fast path
            return None
        offset += label + 1
        if offset >= length:
            return None
        label = wire[offset]
    name_end = offset + 1
    question_end = name_end + 4
    if question_end > length:
        return None
    qtype = (wire[name_end] << 8) | wire[name_end + 1]
    variant = (wire[2] & 1) | (VARIANT_CD if wire[3] & 0x10 else 0) | (VARIANT_AD if wire[3] & 0x20 else 0)
    max_size = 512
    if arcount == 0:
        if question_end != length:
            return None
    elif arcount == 1:
        # OPT: root owner (0), TYPE 41, CLASS = payload size, TTL = ext-rcode, version, DO|Z, RDLEN, options.
        opt = question_end
        if opt + 11 > length or wire[opt] or (wire[opt + 1] << 8 | wire[opt + 2]) != _OPT:
            return None
        if wire[opt + 6]:  # EDNS version other than 0: the full path answers BADVERS
            return None
        rdlen = wire[opt + 9] << 8 | wire[opt + 10]
        if opt + 11 + rdlen != length:
            return None
        option = opt + 11
        while option < length:  # options must tile the RDATA exactly, else the full path answers FORMERR
            if option + 4 > length:
                return None
            if wire[option] == 0xFE and wire[option + 1] == 0xB1:  # 65201, the grant scope
                variant |= VARIANT_SCOPE
            option += 4 + (wire[option + 2] << 8 | wire[option + 3])
        if option != length:
            return None
        variant |= VARIANT_EDNS | (VARIANT_DO if wire[opt + 7] & 0x80 else 0)
        max_size = max(512, wire[opt + 3] << 8 | wire[opt + 4])
    else:
        return None
    key = wire[12:name_end].lower() + wire[name_end:question_end] + _VARIANT_BYTES[variant]
    return WireQuery(name_end, question_end, qtype, key, variant, max_size)


_VARIANT_BYTES = [bytes((v,)) for v in range(64)]


# The bytes Name.to_text writes as themselves (dnspython's _escapify): printable ASCII but for '"().;\\@$'.
_PLAIN = bytes(range(0x21, 0x7F)).translate(None, b'"().;\\@$')


def name_key(name: dns.name.Name) -> str:
    """How policies key a name: ``name.to_text(omit_final_dot=True).lower()``, "" for the root."""
    labels = name.labels
    if len(labels) > 1 and not labels[-1]:
        joined = b".".join(labels[:-1])
        # Only the separators left once plain bytes are taken out: no label needs escaping (nor holds a dot).
        if len(joined.translate(None, _PLAIN)) == len(labels) - 2:
            return joined.lower().decode("ascii")
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""
