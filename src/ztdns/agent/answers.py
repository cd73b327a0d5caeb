"""DNS message handling for the stub (sans-IO, bytes in and out).

Only addresses that belong to the question — the queried name or a name its CNAME chain leads to — are opened;
an A record for some other owner name slipped into the answer section opens nothing. Queries go upstream with
the grant-scope option added (:func:`ask_for_scope`); answers come back to the application without it
(:func:`take_scope`).
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from ztdns.wire.grant_scope import GRANT_SCOPE, GRANT_SCOPE_BYTES, PortScope, decode_scope

HEADER = 12
_A, _AAAA, _CNAME, _IN, _OPT = 1, 28, 5, 1, 41
# The OPT record the stub adds to a query that had none: root owner, TYPE 41, payload 1232 (the upstreams are
# streams: only a formality), no flags, the empty grant-scope option.
_SCOPE_REQUEST = GRANT_SCOPE_BYTES + b"\0\0"
_ADDED_OPT = b"\0" + struct.pack("!HHIH", _OPT, 1232, 0, len(_SCOPE_REQUEST)) + _SCOPE_REQUEST
_MAX_CHAIN = 16


class BadMessage(Exception):
    """The bytes are not a DNS message we can answer or forward."""


class Answer(NamedTuple):
    """(A tuple, not a frozen dataclass: built per answer, and a frozen dataclass's __init__ costs ~1 µs.)"""

    name: str  # the queried name, lower case, no trailing dot
    rcode: int
    records: list[tuple[str, int]]  # (address, TTL) from the CNAME chain's final owner(s)


def _name(wire: bytes, offset: int, known: dict[int, bytes]) -> tuple[bytes, int]:
    """Like :func:`_parse_name`, but a compression pointer to a name already read costs one dict lookup.

    Answer owners are nearly always a pointer to the question name (or to a CNAME target read before).
    """
    if wire[offset] >= 0xC0:
        name = known.get(((wire[offset] & 0x3F) << 8) | wire[offset + 1])
        if name is not None:
            return name, offset + 2
    name, end = _parse_name(wire, offset)
    known[offset] = name
    return name, end


def _parse_name(wire: bytes, offset: int) -> tuple[bytes, int]:
    """The name at ``offset`` (lower case, dot-separated, compression followed) and the offset after it."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    while True:
        length = wire[offset]
        if length >= 0xC0:
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 32:
                raise BadMessage("compression loop")
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            continue
        if length > 63:
            raise BadMessage("bad label length")
        if length == 0:
            return b".".join(labels).lower(), end if end >= 0 else offset + 1
        labels.append(wire[offset + 1 : offset + 1 + length])
        offset += 1 + length


def addresses(wire: bytes) -> Answer:
    """The A/AAAA records in a response that answer its question (after following CNAMEs).

    Hand-parsed: this runs for every answer before it is released, and a full dnspython parse costs several
    times the whole budget. Anything malformed raises BadMessage (the stub then answers SERVFAIL).
    """
    try:
        flags, qdcount, ancount = struct.unpack_from("!HHH", wire, 2)
        if qdcount != 1:
            raise BadMessage(f"{qdcount} questions")
        known: dict[int, bytes] = {}
        qname, offset = _name(wire, HEADER, known)
        offset += 4
        cnames: dict[bytes, bytes] = {}
        found: list[tuple[bytes, str, int]] = []
        for _ in range(ancount):
            owner, offset = _name(wire, offset, known)
            rtype, rclass, ttl, size = struct.unpack_from("!HHIH", wire, offset)
            offset += 10
            if offset + size > len(wire):
                raise BadMessage("truncated record")
            if rclass == _IN:
                if rtype == _A and size == 4:
                    found.append((owner, socket.inet_ntop(socket.AF_INET, wire[offset : offset + 4]), ttl))
                elif rtype == _AAAA and size == 16:
                    found.append((owner, socket.inet_ntop(socket.AF_INET6, wire[offset : offset + 16]), ttl))
                elif rtype == _CNAME:
                    cnames.setdefault(owner, _name(wire, offset, known)[0])
            offset += size
    except (IndexError, struct.error, OSError):
        raise BadMessage("malformed response") from None
    # The chain: follow CNAMEs from the question name only, bounded against loops.
    owners = {qname}
    current = qname
    for _ in range(_MAX_CHAIN):
        target = cnames.get(current)
        if target is None or target in owners:
            break
        owners.add(target)
        current = target
    records = [(address, ttl) for owner, address, ttl in found if owner in owners]
    rcode = flags & 0x000F
    return Answer(qname.decode("ascii", "replace"), rcode, records)


# Extended DNS errors (RFC 8914) a protective resolver gives a name its policy refuses.
_BLOCKING_EDE = {15: "blocked", 16: "censored", 17: "filtered", 18: "prohibited"}


def blocking_reason(wire: bytes) -> tuple[int, str] | None:
    """(EDE code, text) when ``wire`` says its name was blocked (EDE 15–18), else None. Parses the whole
    message: only for negative answers, after they are released."""
    try:
        message = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):
        return None
    for option in message.options:
        if isinstance(option, dns.edns.EDEOption) and int(option.code) in _BLOCKING_EDE:
            return int(option.code), option.text or _BLOCKING_EDE[int(option.code)]
    return None


def _skip_name(wire: bytes, offset: int) -> int:
    """The offset after the (possibly compressed) name at ``offset``."""
    while True:
        length = wire[offset]
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise BadMessage("bad label length")
        offset += 1 + length
        if length == 0:
            return offset


def _opt_record(wire: bytes) -> tuple[int, int, int]:
    """(start of the OPT record, start of its RDATA, end of its RDATA), or (-1, -1, end of the message's records)
    when there is none. Walks the sections by hand; malformed input raises BadMessage."""
    try:
        qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", wire, 4)
        offset = HEADER
        for _ in range(qdcount):
            offset = _skip_name(wire, offset) + 4
        for index in range(ancount + nscount + arcount):
            start = offset
            offset = _skip_name(wire, offset)
            rtype, size = struct.unpack_from("!H6xH", wire, offset)
            offset += 10 + size
            if offset > len(wire):
                raise BadMessage("truncated record")
            if rtype == _OPT and index >= ancount + nscount:
                return start, offset - size, offset
    except (IndexError, struct.error):
        raise BadMessage("malformed message") from None
    return -1, -1, offset


def ask_for_scope(query: bytes) -> tuple[bytes, bool]:
    """``query`` with the grant-scope option added (to its OPT record, or in one added for it), and whether the
    OPT record was added (the answer's is then removed before the application gets it)."""
    start, rdata, end = _opt_record(query)
    if start < 0:
        arcount = struct.unpack_from("!H", query, 10)[0] + 1
        return query[:10] + struct.pack("!H", arcount) + query[12:end] + _ADDED_OPT + query[end:], True
    size = end - rdata + len(_SCOPE_REQUEST)
    return query[: rdata - 2] + struct.pack("!H", size) + query[rdata:end] + _SCOPE_REQUEST + query[end:], False


def take_scope(response: bytes, remove_opt: bool) -> tuple[PortScope, bytes]:
    """The grant scope in ``response`` (empty: every port) and the response as the application gets it: without
    the option, and without the OPT record when ``remove_opt`` (the stub added it to the query).

    Costs one scan of the bytes when the answer carries no option and the application's query had EDNS."""
    if not remove_opt and GRANT_SCOPE_BYTES not in response:
        return (), response
    start, rdata, end = _opt_record(response)
    if start < 0:
        return (), response
    scope: PortScope = ()
    kept = []
    option = rdata
    while option + 4 <= end:
        code, length = struct.unpack_from("!HH", response, option)
        if code == GRANT_SCOPE:
            try:
                scope = decode_scope(response[option + 4 : option + 4 + length])
            except ValueError as exc:
                raise BadMessage(str(exc)) from None
        else:
            kept.append(response[option : option + 4 + length])
        option += 4 + length
    if remove_opt:
        arcount = struct.unpack_from("!H", response, 10)[0] - 1
        return scope, response[:10] + struct.pack("!H", arcount) + response[12:start] + response[end:]
    options = b"".join(kept)
    return scope, response[: rdata - 2] + struct.pack("!H", len(options)) + options + response[end:]


def check_query(wire: bytes) -> None:
    """Reject what must not be forwarded: short packets, responses, multi-question queries."""
    if len(wire) < HEADER:
        raise BadMessage("shorter than a DNS header")
    flags, qdcount = struct.unpack_from("!HH", wire, 2)
    if flags & 0x8000:
        raise BadMessage("a response, not a query")
    if qdcount != 1:
        raise BadMessage(f"{qdcount} questions")
