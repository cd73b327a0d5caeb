"""The header: flags, rcode and EDNS fields of a dnspython message as plain ints; the UDP size limit; the one
header-only response builder (and the one that echoes the question); IDs.

dnspython's ``Message.rcode()``, ``edns`` and ``ednsflags`` and its ``dns.flags.Flag`` enums go through Python's
enum machinery on every call and every ``|`` and ``&`` (a value with rcode bits even creates a new pseudo-member
each time): a few µs a query that every stage paid again. These give the same numbers.
"""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.rcode

QR = int(dns.flags.QR)
TC = int(dns.flags.TC)
RD = int(dns.flags.RD)
RA = int(dns.flags.RA)
AD = int(dns.flags.AD)
CD = int(dns.flags.CD)
DO = int(dns.flags.DO)  # in the OPT record's TTL
OPCODE_MASK = 0x7800
# RFC 6891 / DNS flag day 2020: advertise and honour at most 1232 bytes over UDP, avoiding fragmentation.
UDP_PAYLOAD = 1232


def edns_of(message: dns.message.Message) -> tuple[int, int]:
    """``(message.edns, message.ednsflags)``: the EDNS version (-1 without EDNS) and the OPT record's TTL."""
    opt = message.opt
    if not opt:  # as dnspython asks it (an RRset is false when empty)
        return -1, 0
    ednsflags: int = opt.ttl
    return (ednsflags >> 16) & 0xFF, ednsflags


def rcode_of(message: dns.message.Message) -> int:
    """``message.rcode()`` as an int: the header's four bits and the extended ones of the OPT record."""
    return (int(message.flags) & 0xF) | ((edns_of(message)[1] >> 20) & 0xFF0)


def opcode_of(message: dns.message.Message) -> int:
    """``message.opcode()`` as an int."""
    return (int(message.flags) & OPCODE_MASK) >> 11


def udp_limit(payload: int, ours: int = UDP_PAYLOAD) -> int:
    """The largest UDP answer to a query whose EDNS payload size is ``payload`` (0 without EDNS: 512), capped at
    ``ours`` (the endpoint stub, answering over loopback, passes 65535)."""
    return max(512, min(payload, ours))


def payload_of(query: bytes) -> int:
    """The EDNS payload size a query advertises; 0 without EDNS or when it does not parse."""
    try:
        message = dns.message.from_wire(query, ignore_trailing=True)
    except dns.exception.DNSException:
        return 0
    return message.payload if message.edns >= 0 else 0


def header_only(
    query: bytes, rcode: int, truncated: bool = False, *, copy_rd: bool = True, edns: bool = False
) -> bytes:
    """A response that echoes only the query's header (ID, opcode, RD unless ``copy_rd`` is false), counts zero
    but an OPT record of our payload size when ``edns`` (the query had a valid one: RFC 6891 §6.1.1 wants it in
    the answer, FORMERR included): for queries we cannot or will not parse. Callers decide not to answer
    responses and packets shorter than a header."""
    opcode_rd = (query[2] & (0x79 if copy_rd else 0x78)) << 8 if len(query) > 2 else 0
    flags = QR | opcode_rd | (TC if truncated else 0) | (rcode & 0xF)
    header = query[:2].ljust(2, b"\0") + flags.to_bytes(2, "big")
    if not edns:
        return header + bytes(8)
    # The root name, type OPT, class = payload size, TTL = extended rcode bits (version 0, DO clear), no options.
    return header + _COUNTS_ONE_OPT + b"\0" + _OPT_RR.pack(41, UDP_PAYLOAD, (rcode >> 4) << 24, 0)


_COUNTS_ONE_OPT = struct.pack("!HHHH", 0, 0, 0, 1)
_OPT_RR = struct.Struct("!HHIH")


def error_response(query: bytes, rcode: int, truncated: bool = False) -> bytes:
    """``rcode`` (and TC) for ``query`` with its question (and EDNS) echoed when it parses, else
    :func:`header_only`: the client can match it to its query and retry (over TCP, when truncated)."""
    try:
        response = dns.message.make_response(dns.message.from_wire(query, ignore_trailing=True))
        response.set_rcode(dns.rcode.Rcode.make(rcode))
        if truncated:
            response.flags |= dns.flags.TC
        wire: bytes = response.to_wire()
    except dns.exception.DNSException:  # unparsable, or signed with a key we do not know
        return header_only(query, rcode, truncated)
    return wire


def truncate(response: bytes) -> bytes:
    """A TC=1 copy of a response with the question only, telling the client to retry over TCP."""
    message = dns.message.from_wire(response, ignore_trailing=True)
    short = dns.message.Message(id=message.id)
    short.flags = message.flags | dns.flags.TC
    short.question = message.question
    wire: bytes = short.to_wire()
    return wire


def with_id(wire: bytes, ident: int) -> bytes:
    return struct.pack("!H", ident) + wire[2:]


def message_id(wire: bytes) -> int:
    ident: int = struct.unpack_from("!H", wire)[0]
    return ident
