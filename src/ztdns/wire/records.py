"""Walking the records of a message without building objects: what replays (TTL offsets) and encrypted transports
(EDNS padding, the smallest TTL) need on every message.

Hand-written because it runs per message and needs no objects: we only walk record headers. Anything malformed
makes the transports' functions leave the message alone (padding) or report no TTL (DoH then sends no max-age).
"""

from __future__ import annotations

import struct

PADDING_OPTION = 12
# RFC 8467 section 4.1: responders pad to a multiple of 468 octets.
RESPONSE_BLOCK = 468
_OPT = 41
_SOA = 6


def skip_name(wire: bytes, offset: int) -> int:
    """Offset just past a (possibly compressed) name starting at ``offset``. Raises IndexError past the end
    and ValueError on the reserved label types (0x40, 0x80)."""
    while True:
        label = wire[offset]
        if label == 0:
            return offset + 1
        if label >= 0xC0:
            return offset + 2
        if label > 63:
            raise ValueError("reserved label type")
        offset += label + 1


ANSWER, AUTHORITY, ADDITIONAL = 1, 2, 3


def records(wire: bytes) -> list[tuple[int, int, int, int, int]]:
    """(section, type, ttl, rdata offset, rdata length) of every record after the question section; the TTL
    field is at rdata offset - 6. Raises IndexError or ValueError on malformed wire (a record running past the
    end, bytes left over)."""
    end = len(wire)
    if end < 12:
        raise ValueError("shorter than a header")
    qdcount = wire[4] << 8 | wire[5]
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(wire, offset) + 4
    found = []
    for section, count in (
        (ANSWER, wire[6] << 8 | wire[7]),
        (AUTHORITY, wire[8] << 8 | wire[9]),
        (ADDITIONAL, wire[10] << 8 | wire[11]),
    ):
        for _ in range(count):
            offset = skip_name(wire, offset)
            if offset + 10 > end:
                raise ValueError("record header runs past the end")
            rdata = offset + 10
            rdlength = wire[offset + 8] << 8 | wire[offset + 9]
            if rdata + rdlength > end:
                raise ValueError("record runs past the end")
            ttl = int.from_bytes(wire[offset + 4 : offset + 8], "big")
            found.append((section, wire[offset] << 8 | wire[offset + 1], ttl, rdata, rdlength))
            offset = rdata + rdlength
    if offset > end:
        raise ValueError("question runs past the end")
    return found


def ttl_offsets(wire: bytes) -> list[tuple[int, int]]:
    """(offset, ttl) of every record's TTL in a response, except OPT (whose TTL field holds flags)."""
    return [(rdata - 6, ttl) for _section, rtype, ttl, rdata, _ in records(wire) if rtype != _OPT]


def _opt(wire: bytes) -> tuple[int, int] | None:
    """(rdata offset, rdata length) of the OPT record when it is the last record of the message, else None."""
    found = records(wire)
    if not found:
        return None
    section, rtype, _ttl, rdata, rdlength = found[-1]
    if section != ADDITIONAL or rtype != _OPT or rdata + rdlength != len(wire):
        return None
    return rdata, rdlength


def _has_option(wire: bytes, rdata: int, rdlength: int, code: int) -> bool:
    offset, end = rdata, rdata + rdlength
    while offset + 4 <= end:
        option, length = struct.unpack_from(">HH", wire, offset)
        if option == code:
            return True
        offset += 4 + length
    return False


def wants_padding(query: bytes) -> bool:
    """True when the query carries an EDNS Padding option (RFC 7830: then the response MUST be padded)."""
    if len(query) < 12 or not (query[10] or query[11]):
        return False  # no additional records, so no OPT: skip the walk
    try:
        opt = _opt(query)
    except (IndexError, ValueError, struct.error):
        return False
    return opt is not None and _has_option(query, opt[0], opt[1], PADDING_OPTION)


def pad_response(response: bytes, block: int = RESPONSE_BLOCK) -> bytes:
    """RESPONSE with a Padding option that makes its length a multiple of BLOCK. Unchanged when it has no OPT
    as its last record (a TSIG after it would be invalidated), is already padded, or would exceed 65535."""
    try:
        opt = _opt(response)
    except (IndexError, ValueError, struct.error):
        return response
    if opt is None:
        return response
    rdata, rdlength = opt
    if _has_option(response, rdata, rdlength, PADDING_OPTION):
        return response
    pad = -(len(response) + 4) % block
    if len(response) + 4 + pad > 65535:
        return response
    return b"".join(
        (
            response[: rdata - 2],
            struct.pack(">H", rdlength + 4 + pad),
            response[rdata:],
            struct.pack(">HH", PADDING_OPTION, pad),
            bytes(pad),
        )
    )


def min_ttl(response: bytes) -> int | None:
    """Freshness lifetime of a response for HTTP caching (RFC 8484 section 5.1): the smallest TTL of the
    answer and authority records; for an SOA, the smaller of its TTL and its MINIMUM (RFC 2308). None without
    records or when malformed."""
    try:
        ttls = []
        for section, rtype, ttl, rdata, rdlength in records(response):
            if section == ADDITIONAL:
                continue
            if rtype == _SOA and rdlength >= 20:
                ttls.append(struct.unpack_from(">I", response, rdata + rdlength - 4)[0])
            ttls.append(ttl)
    except (IndexError, ValueError, struct.error):
        return None
    return min(ttls) if ttls else None


def is_query(wire: bytes) -> bool:
    """True when WIRE is a well-formed DNS message with QR=0: what DoH checks before the handler sees it."""
    if len(wire) < 12 or wire[2] & 0x80:
        return False
    try:
        records(wire)
    except (IndexError, ValueError, struct.error):
        return False
    return True
