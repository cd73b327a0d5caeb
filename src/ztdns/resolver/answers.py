"""Recursion's answers: the messages it builds (CNAME chains joined, DNSSEC records stripped for DO=0 clients)
and its own cache of resolved answers, kept as RRsets rather than wire so that a hit costs a few object copies
instead of a parse. Sans-IO; the cache's size is ``[resolver.recursion] cache_entries`` and its TTLs are capped
by ``[cache] max_ttl``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from ztdns.dnssec.names import wire_key
from ztdns.dnssec.validator import Verdict
from ztdns.wire.header import rcode_of

_BOGUS_TTL = 60  # bogus answers are kept this long at most (RFC 4035 §4.7: do not keep asking)
# A response's flags per rcode, made once: set_rcode and ``|`` on dnspython's Flag enum are Python code.
_RESPONSE_FLAGS = {rcode: dns.flags.Flag(dns.flags.QR | dns.flags.RA | rcode) for rcode in range(16)}


@dataclass
class Cached:
    """A resolved answer. The RRsets are never changed after storing (hits get copies when TTLs count down)."""

    rcode: int
    answer: tuple[dns.rrset.RRset, ...]
    authority: tuple[dns.rrset.RRset, ...]
    stored: float
    expires: float
    verdict: Verdict | None = None

    def aged(self, now: float) -> dns.message.Message:
        """A hit as a fresh message; the cached RRsets are shared until their TTLs must count down."""
        elapsed = int(now - self.stored)
        if not elapsed:
            return response(self.rcode, list(self.answer), list(self.authority))
        return response(self.rcode, _older(self.answer, elapsed), _older(self.authority, elapsed))


class AnswerCache:
    """Resolved answers by (name's wire key, type), least recently used dropped first."""

    def __init__(
        self,
        entries: int,
        max_ttl: int | None = None,
        negative_max_ttl: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.entries = entries
        self.max_ttl = max_ttl  # [cache] max_ttl: no answer is kept longer
        self.negative_max_ttl = negative_max_ttl  # [cache] negative_max_ttl: for NXDOMAIN and NODATA
        self._clock = clock
        self._items: OrderedDict[tuple[bytes, int], Cached] = OrderedDict()

    def __contains__(self, key: tuple[bytes, int]) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[bytes, int]) -> Cached | None:
        """The entry if it has not expired (marked as recently used)."""
        cached = self._items.get(key)
        if cached is None or cached.expires <= self._clock():
            return None
        self._items.move_to_end(key)
        return cached

    def store(self, key: tuple[bytes, int], message: dns.message.Message, verdict: Verdict | None) -> None:
        if self.entries == 0:
            return
        ttl = min_ttl(message)
        if verdict is not None and verdict.bogus:
            ttl = min(ttl, _BOGUS_TTL)
        if self.max_ttl is not None:
            ttl = min(ttl, self.max_ttl)
        if self.negative_max_ttl is not None and not message.answer:
            ttl = min(ttl, self.negative_max_ttl)
        now = self._clock()
        self._items[key] = Cached(
            rcode_of(message), tuple(message.answer), tuple(message.authority), now, now + ttl, verdict
        )
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)


def min_ttl(message: dns.message.Message) -> int:
    ttls = [rrset.ttl for section in (message.answer, message.authority) for rrset in section]
    return min(ttls, default=0)


def response(rcode: int, answer: list[dns.rrset.RRset], authority: list[dns.rrset.RRset]) -> dns.message.Message:
    """A recursion result: just flags, rcode and sections (callers set the question they answer)."""
    message = dns.message.Message(id=0)  # internal: the ID of the client's query is set on the way out
    flags = _RESPONSE_FLAGS.get(rcode)
    if flags is None:  # an extended rcode: its upper bits go to EDNS
        message.flags = dns.flags.QR | dns.flags.RA
        message.set_rcode(dns.rcode.Rcode.make(rcode))
    else:
        message.flags = flags
    message.answer = answer
    message.authority = authority
    return message


def chain_answer(hops: list[tuple[dns.name.Name, dns.message.Message]]) -> dns.message.Message:
    """The answer to the first name of a CNAME chain: every hop's answer, the last hop's rcode and authority."""
    answer = [rrset for _, hop in hops for rrset in hop.answer]
    last = hops[-1][1]
    return response(rcode_of(last), _dedupe(answer), list(last.authority))


def strip_dnssec(message: dns.message.Message, asked: int) -> None:
    """Remove the DNSSEC records a DO=0 client did not ask for (the type it asked for stays, RRSIG included)."""
    dnssec_types = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3} - {asked}
    message.answer = [r for r in message.answer if r.rdtype not in dnssec_types]
    message.authority = [r for r in message.authority if r.rdtype not in dnssec_types]


def _dedupe(rrsets: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
    seen: dict[tuple[bytes, int, int], dns.rrset.RRset] = {}
    for rrset in rrsets:
        seen.setdefault((wire_key(rrset.name), rrset.rdtype, rrset.covers), rrset)
    return list(seen.values())


def _older(rrsets: tuple[dns.rrset.RRset, ...], elapsed: int) -> list[dns.rrset.RRset]:
    aged = []
    for rrset in rrsets:
        copy: dns.rrset.RRset = rrset.copy()  # a copy whose TTL can change (dnspython's copy is untyped)
        copy.ttl = max(0, rrset.ttl - elapsed)
        aged.append(copy)
    return aged
