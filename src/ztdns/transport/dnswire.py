"""The little DNS wire reading encrypted transports need on every response: EDNS padding and the smallest TTL.

Hand-written because it runs per message and needs no objects: we only walk record headers, with
:func:`ztdns.wire.records`. Anything malformed makes these functions leave the message alone (padding) or
report no TTL (DoH then sends no max-age).
"""

from __future__ import annotations

import struct

from ztdns.wire import ADDITIONAL, records

PADDING_OPTION = 12
# RFC 8467 section 4.1: responders pad to a multiple of 468 octets.
RESPONSE_BLOCK = 468
_OPT = 41
_SOA = 6


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
