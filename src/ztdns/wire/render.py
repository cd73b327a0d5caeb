"""Rendering a response for the client: ``Message.to_wire`` on the hot path, with :mod:`ztdns.wire.encode`.

Every answer the pipeline builds goes through here (the respond stage); dnspython's renderer spent ≈ 6% of a cold
recursive pass's CPU on it, mostly creating and hashing a ``dns.name.Name`` per name suffix for compression.
The bytes are those of ``Message.to_wire`` with records in their stored order (dnspython
shuffles each RRset; any order is valid, and cached answers are replayed as bytes anyway): header, question,
the three sections, then the OPT record (its TTL carries the extended rcode, version and DO, as dnspython sets
them). The respond stage hands the OPT record's fields in as an :class:`Opt` rather than as a dnspython RRset,
which costs more to build than the rest of the rendering. Anything the fast encoder cannot do — a type dnspython
compresses that we do not know, a relative name, TSIG, EDNS padding, a value out of range — renders the whole
message with dnspython instead, so the outcome (bytes or exception) is dnspython's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.message
import dns.rdatatype
import dns.rrset

from ztdns.wire.encode import Unencodable, encoder, put_compressible, put_options

MAX_SIZE = 65535


@dataclass(frozen=True, slots=True)
class Opt:
    """The OPT record of a message (RFC 6891), as ``message.use_edns(0, ttl, payload, options=options)`` makes it."""

    payload: int  # the UDP payload size, in the record's CLASS
    ttl: int  # extended rcode << 24 | version << 16 | flags (DO)
    options: tuple[dns.edns.Option, ...] = ()


def render(message: dns.message.Message, max_size: int = 0, opt: Opt | None = None) -> bytes:
    """``message.to_wire(max_size=max_size)`` without shuffling: raises ``dns.exception.TooBig`` past
    ``max_size`` bytes (0: the message's request payload, or 65535), clamped to 512..65535 like dnspython.
    ``opt``, when given, is the message's OPT record (``message.opt`` must then be None)."""
    try:
        wire = encode(message, opt)
    except (Unencodable, dns.exception.DNSException, struct.error, OverflowError, ValueError):
        if opt is not None:
            message.use_edns(0, opt.ttl, opt.payload, options=list(opt.options))
        return message.to_wire(max_size=max_size)
    if max_size == 0:
        max_size = message.request_payload or MAX_SIZE
    if len(wire) > min(max(max_size, 512), MAX_SIZE):
        raise dns.exception.TooBig
    return wire


def encode(message: dns.message.Message, opt: Opt | None = None) -> bytes:
    """The fast path of :func:`render`, without the size check; raises :class:`Unencodable` (or the error of
    a value out of range) where dnspython must render instead."""
    if message.tsig is not None or message.pad or message.origin is not None:
        raise Unencodable("TSIG, padding or an origin")
    if opt is not None and message.opt is not None:
        raise ValueError("two OPT records")
    out = bytearray(12)
    table: dict[bytes, int] = {}
    for question in message.question:
        put_compressible(out, question.name, table)
        out += struct.pack("!HH", question.rdtype, question.rdclass)
    answers = _put_section(out, message.answer, table)
    authorities = _put_section(out, message.authority, table)
    additionals = _put_section(out, message.additional, table)
    if opt is not None:
        out += struct.pack("!BHHI", 0, dns.rdatatype.OPT, opt.payload, opt.ttl)  # owner: the root
        length_at = len(out)
        out += b"\x00\x00"
        put_options(out, opt.options)
        out[length_at : length_at + 2] = (len(out) - length_at - 2).to_bytes(2, "big")
        additionals += 1
    elif message.opt is not None:
        additionals += _put_rrset(out, message.opt, table)
    out[:12] = struct.pack(
        "!HHHHHH", message.id, message.flags, len(message.question), answers, authorities, additionals
    )
    return bytes(out)


def _put_section(out: bytearray, section: list[dns.rrset.RRset], table: dict[bytes, int]) -> int:
    count = 0
    for rrset in section:
        count += _put_rrset(out, rrset, table)
    return count


def _put_rrset(out: bytearray, rrset: dns.rrset.RRset, table: dict[bytes, int]) -> int:
    """Append the records of ``rrset`` in stored order; the number of records written (an empty RRset is one
    record with empty RDATA and TTL 0, as in dnspython's dynamic-update rendering)."""
    name = rrset.name
    rdclass = rrset.rdclass if rrset.deleting is None else rrset.deleting
    if not rrset:
        put_compressible(out, name, table)
        out += struct.pack("!HHIH", rrset.rdtype, rdclass, 0, 0)
        return 1
    fixed = struct.pack("!HHI", rrset.rdtype, rdclass, rrset.ttl)
    for rd in rrset:
        put_compressible(out, name, table)
        out += fixed
        length_at = len(out)
        out += b"\x00\x00"
        encoder(rd)(out, rd, table)
        out[length_at : length_at + 2] = (len(out) - length_at - 2).to_bytes(2, "big")
    return len(rrset)
