"""Header flags, rcode and EDNS fields of a dnspython message as plain ints.

dnspython's ``Message.rcode()``, ``edns`` and ``ednsflags`` and its ``dns.flags.Flag`` enums go through Python's
enum machinery on every call and every ``|`` and ``&`` (a value with rcode bits even creates a new pseudo-member
each time): a few µs a query that every stage paid again. These give the same numbers.
"""

from __future__ import annotations

import dns.flags
import dns.message

QR = int(dns.flags.QR)
TC = int(dns.flags.TC)
RD = int(dns.flags.RD)
RA = int(dns.flags.RA)
AD = int(dns.flags.AD)
CD = int(dns.flags.CD)
DO = int(dns.flags.DO)  # in the OPT record's TTL
OPCODE_MASK = 0x7800


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
