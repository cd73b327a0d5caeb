"""The message cache: upstream answers kept by question, shared by every identity.

Owns: positive and negative caching (RFC 2308) with TTL clamps, LRU eviction at ``max_entries``,
serve-stale (RFC 8767) and the bookkeeping for prefetching popular entries before they expire. Policy is
*not* cached here: identity-specific answers live in the fast path's replay table, which reloads drop.
Config: ``[cache]``. Metrics (``MessageCache.collect``): entries, misses, stale answers, prefetches, evictions;
hits are counted by answer kind (``ztdns_cache_hits``, exported by the server: replays are hits too).
Client data touched: none (keys are questions only).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config.cache import CacheConfig
from ztdns.model import Question, Reason, copy_rrset
from ztdns.wire.header import AD, TC, rcode_of

CacheKey = tuple[dns.name.Name, int, int, bool, bool]


def cache_key(question: Question) -> CacheKey:
    # dns.name.Name hashes and compares case-insensitively.
    return (question.name, question.rdtype, question.rdclass, question.dnssec_ok, question.checking_disabled)


@dataclass(slots=True)
class CacheEntry:
    rcode: dns.rcode.Rcode
    answer: list[dns.rrset.RRset]
    authority: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset]
    authenticated: bool  # AD as received/validated
    stored: float  # time.monotonic() when stored
    ttl: int  # the smallest TTL of the entry after clamping: it is fresh until stored + ttl
    hits: int = 0
    prefetching: bool = False
    # What the resolution said about the data (an EDE such as "algorithm unsupported, so insecure"): every answer
    # rendered from the entry says it too.
    reason: Reason | None = None

    @property
    def expires(self) -> float:
        return self.stored + self.ttl

    def sections(self, age: int, stale_ttl: int | None = None) -> tuple[list[dns.rrset.RRset], ...]:
        """Copies of the sections, TTLs decremented by ``age`` (or set to ``stale_ttl`` when serving stale)."""
        out: list[list[dns.rrset.RRset]] = []
        for section in (self.answer, self.authority, self.additional):
            copies = []
            for rrset in section:
                copy = copy_rrset(rrset)
                copy.ttl = stale_ttl if stale_ttl is not None else max(rrset.ttl - age, 0)
                copies.append(copy)
            out.append(copies)
        return tuple(out)


def with_ttl(rrset: dns.rrset.RRset, ttl: int) -> dns.rrset.RRset:
    """``rrset`` itself when its TTL is ``ttl``, else a copy with that TTL."""
    if rrset.ttl == ttl:
        return rrset
    copy = copy_rrset(rrset)
    copy.ttl = ttl
    return copy


class MessageCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.stale_answers = 0
        self.evictions = 0
        self.prefetches = 0

    def __len__(self) -> int:
        return len(self._entries)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("ztdns_cache_entries", "Entries in the message cache", value=len(self._entries))
        yield CounterMetricFamily("ztdns_cache_misses", "Cache misses", value=self.misses)
        yield CounterMetricFamily(
            "ztdns_cache_stale_answers", "Stale answers served (RFC 8767)", value=self.stale_answers
        )
        yield CounterMetricFamily("ztdns_cache_prefetches", "Entries refreshed before expiry", value=self.prefetches)
        yield CounterMetricFamily("ztdns_cache_evictions", "Entries evicted by size", value=self.evictions)

    def reconfigure(self, config: CacheConfig) -> None:
        self.config = config
        self._trim()

    def lookup(self, question: Question) -> tuple[CacheEntry | None, bool]:
        """(entry, fresh). A stale entry is returned with fresh=False while it may still be served stale."""
        key = cache_key(question)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None, False
        now = self.clock()
        if now < entry.expires:
            self._entries.move_to_end(key)
            entry.hits += 1
            self.hits += 1
            return entry, True
        self.misses += 1
        if self.config.serve_stale and now < entry.expires + self.config.stale_max_age:
            return entry, False
        del self._entries[key]
        return None, False

    def store(
        self, question: Question, response: dns.message.Message, reason: Reason | None = None
    ) -> CacheEntry | None:
        """Cache a NOERROR or NXDOMAIN answer (with the ``reason`` its resolution gave, if any); returns the entry,
        or None when it is not cacheable.

        The entry keeps the response's RRsets where their TTLs stand and copies those it clamps: RRsets are
        shared between resolvers' answers, their caches and this one, and never changed in place."""
        if self.config.max_entries == 0:
            return None
        flags = int(response.flags)
        rcode = rcode_of(response)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or flags & TC:
            return None
        config = self.config
        answer = list(response.answer)
        authority = list(response.authority)
        additional = [rrset for rrset in response.additional if rrset.rdtype != dns.rdatatype.OPT]
        negative = rcode == dns.rcode.NXDOMAIN or not _answers_question(answer, question)
        if negative:
            soa = next((r for r in authority if r.rdtype == dns.rdatatype.SOA), None)
            if soa is None:
                return None  # RFC 2308 §5: without an SOA a negative answer is not cached
            minimum = soa[0].minimum
            ttl = min(soa.ttl, minimum, config.negative_max_ttl)
            ttl = max(ttl, config.min_ttl)
            authority = [with_ttl(rrset, min(rrset.ttl, ttl)) for rrset in authority]
        else:
            ttl = config.max_ttl
            low, high = config.min_ttl, config.max_ttl
            for section in (answer, authority, additional):
                for index, rrset in enumerate(section):
                    clamped = min(max(rrset.ttl, low), high)
                    section[index] = with_ttl(rrset, clamped)
                    ttl = min(ttl, clamped)
        entry = CacheEntry(
            rcode=dns.rcode.Rcode.make(rcode),
            answer=answer,
            authority=authority,
            additional=additional,
            authenticated=bool(flags & AD),
            stored=self.clock(),
            ttl=ttl,
            reason=reason,
        )
        if ttl <= 0:
            return entry  # usable for this answer only
        key = cache_key(question)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._trim()
        return entry

    def due_for_prefetch(self, entry: CacheEntry) -> bool:
        """Popular and in the last ``prefetch_window`` of its lifetime, and not already being refreshed."""
        config = self.config
        if not config.prefetch or entry.prefetching or entry.hits < config.prefetch_min_hits:
            return False
        return self.clock() >= entry.expires - entry.ttl * config.prefetch_window

    def _trim(self) -> None:
        while len(self._entries) > self.config.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()


def _answers_question(answer: list[dns.rrset.RRset], question: Question) -> bool:
    """True when the answer section holds data of the asked type (following the chain), i.e. not NODATA."""
    if question.rdtype == dns.rdatatype.ANY:
        return bool(answer)
    return any(rrset.rdtype == question.rdtype for rrset in answer) or (
        question.rdtype == dns.rdatatype.CNAME and bool(answer)
    )
