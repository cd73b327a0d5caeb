"""DNS message handling for the stub (sans-IO, bytes in and out).

Only addresses that belong to the question — the queried name or a name its CNAME chain leads to — are opened;
an A record for some other owner name slipped into the answer section opens nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

HEADER = 12
_MAX_CHAIN = 16


class BadMessage(Exception):
    """The bytes are not a DNS message we can answer or forward."""


@dataclass(frozen=True, slots=True)
class Answer:
    name: str  # the queried name, lower case, no trailing dot
    rcode: int
    records: list[tuple[str, int]]  # (address, TTL) from the CNAME chain's final owner(s)


def addresses(wire: bytes) -> Answer:
    """The A/AAAA records in a response that answer its question (after following CNAMEs)."""
    try:
        message = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        raise BadMessage(f"unparsable response: {exc}") from None
    if not message.question:
        raise BadMessage("response without a question")
    question = message.question[0]
    qname = question.name
    owners = {qname}
    current = qname
    # The chain: follow CNAMEs from the question name only, in any order they appear, bounded against loops.
    for _ in range(_MAX_CHAIN):
        target = None
        for rrset in message.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == current and rrset.rdclass == dns.rdataclass.IN:
                target = rrset[0].target
                break
        if target is None or target in owners:
            break
        owners.add(target)
        current = target
    records: list[tuple[str, int]] = []
    for rrset in message.answer:
        if (
            rrset.rdclass == dns.rdataclass.IN
            and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            and rrset.name in owners
        ):
            records.extend((rdata.address, rrset.ttl) for rdata in rrset)
    name = qname.to_text(omit_final_dot=True).lower()
    return Answer(name, message.rcode(), records)


def check_query(wire: bytes) -> None:
    """Reject what must not be forwarded: short packets, responses, multi-question queries."""
    if len(wire) < HEADER:
        raise BadMessage("shorter than a DNS header")
    flags, qdcount = struct.unpack_from("!HH", wire, 2)
    if flags & 0x8000:
        raise BadMessage("a response, not a query")
    if qdcount != 1:
        raise BadMessage(f"{qdcount} questions")


def servfail(query: bytes) -> bytes:
    """SERVFAIL for ``query``: the header, RD copied, the question echoed when it parses."""
    try:
        message = dns.message.from_wire(query, ignore_trailing=True)
        response = dns.message.make_response(message)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()
    except dns.exception.DNSException:
        ident, flags = struct.unpack_from("!HH", query.ljust(4, b"\0"), 0)
        return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x0100) | dns.rcode.SERVFAIL, 0, 0, 0, 0)


def udp_limit(query: bytes) -> int:
    """The largest UDP response the client accepts: its EDNS payload size, or 512 without EDNS."""
    try:
        message = dns.message.from_wire(query, ignore_trailing=True)
    except dns.exception.DNSException:
        return 512
    return max(512, message.payload) if message.edns >= 0 else 512


def truncate(response: bytes) -> bytes:
    """A TC=1 response with the question only, telling the client to retry over TCP."""
    message = dns.message.from_wire(response, ignore_trailing=True)
    short = dns.message.Message(id=message.id)
    short.flags = message.flags | dns.flags.TC
    short.question = message.question
    return short.to_wire()


def with_id(wire: bytes, ident: int) -> bytes:
    return struct.pack("!H", ident) + wire[2:]


def message_id(wire: bytes) -> int:
    ident: int = struct.unpack_from("!H", wire)[0]
    return ident
