"""The message cache: RFC 2308 negative TTLs, clamps, LRU, serve-stale window, prefetch timing."""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from ztdns.cache import MessageCache
from ztdns.config.cache import CacheConfig
from ztdns.model import Question


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def question(name: str, rdtype: str = "A") -> Question:
    return Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), 1)


def answer(name: str, ttl: int, *rdatas: str) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *rdatas))
    return response


def negative(name: str, soa_ttl: int, minimum: int, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    response.set_rcode(rcode)
    response.authority.append(
        dns.rrset.from_text("example.", soa_ttl, "IN", "SOA", f"ns.example. h.example. 1 3600 600 86400 {minimum}")
    )
    return response


def test_positive_entry_is_fresh_until_its_smallest_ttl_and_counts_down() -> None:
    clock = Clock()
    cache = MessageCache(CacheConfig(), clock)
    cache.store(question("a.example."), answer("a.example.", 60, "192.0.2.1"))
    clock.now += 59
    entry, fresh = cache.lookup(question("A.Example."))
    assert entry is not None and fresh
    assert entry.sections(int(clock.now - entry.stored))[0][0].ttl == 1
    clock.now += 1
    entry, fresh = cache.lookup(question("a.example."))
    assert entry is not None and not fresh  # expired, kept for serve-stale


def test_ttl_clamps() -> None:
    cache = MessageCache(CacheConfig(min_ttl=30, max_ttl=100), Clock())
    low = cache.store(question("low.example."), answer("low.example.", 5, "192.0.2.1"))
    high = cache.store(question("high.example."), answer("high.example.", 5000, "192.0.2.1"))
    assert low is not None and low.ttl == 30
    assert high is not None and high.ttl == 100


def test_storing_never_changes_the_response_rrsets() -> None:
    """Resolvers share RRsets between answers and their own caches: clamps and counting down work on copies."""
    clock = Clock()
    cache = MessageCache(CacheConfig(min_ttl=30, max_ttl=100), clock)
    responses = [
        answer("low.example.", 5, "192.0.2.1"),
        answer("high.example.", 5000, "192.0.2.1"),
        answer("same.example.", 50, "192.0.2.1"),
        negative("nx.example.", 3600, 120, dns.rcode.NXDOMAIN),
    ]
    before = [[(rrset, rrset.ttl, set(rrset)) for rrset in r.answer + r.authority] for r in responses]
    for response in responses:
        name = response.question[0].name
        assert cache.store(Question(name, dns.rdatatype.A, 1), response) is not None
        clock.now += 10
        entry, fresh = cache.lookup(Question(name, dns.rdatatype.A, 1))
        assert entry is not None and fresh
        entry.sections(10)
        entry.sections(0, stale_ttl=30)
    assert [[(rrset, rrset.ttl, set(rrset)) for rrset in r.answer + r.authority] for r in responses] == before
    entry, _ = cache.lookup(question("same.example."))
    assert entry is not None and entry.ttl == 50 and entry.sections(10)[0][0].ttl == 40


def test_negative_ttl_is_min_of_soa_ttl_and_minimum_and_capped() -> None:
    cache = MessageCache(CacheConfig(negative_max_ttl=600), Clock())
    nx = cache.store(question("nx.example."), negative("nx.example.", 3600, 120, dns.rcode.NXDOMAIN))
    assert nx is not None and nx.ttl == 120 and nx.authority[0].ttl == 120
    capped = cache.store(question("n2.example."), negative("n2.example.", 3600, 7200, dns.rcode.NXDOMAIN))
    assert capped is not None and capped.ttl == 600
    nodata = cache.store(question("nd.example."), negative("nd.example.", 50, 300, dns.rcode.NOERROR))
    assert nodata is not None and nodata.ttl == 50


def test_negative_answer_without_soa_is_not_cached() -> None:
    cache = MessageCache(CacheConfig(), Clock())
    response = dns.message.make_response(dns.message.make_query("x.example.", "A"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    assert cache.store(question("x.example."), response) is None


def test_servfail_is_not_cached() -> None:
    cache = MessageCache(CacheConfig(), Clock())
    response = dns.message.make_response(dns.message.make_query("x.example.", "A"))
    response.set_rcode(dns.rcode.SERVFAIL)
    assert cache.store(question("x.example."), response) is None
    assert len(cache) == 0


def test_lru_eviction_keeps_recently_used() -> None:
    cache = MessageCache(CacheConfig(max_entries=2), Clock())
    for name in ("a.example.", "b.example."):
        cache.store(question(name), answer(name, 60, "192.0.2.1"))
    cache.lookup(question("a.example."))  # a is now the most recently used
    cache.store(question("c.example."), answer("c.example.", 60, "192.0.2.1"))
    assert cache.lookup(question("a.example."))[0] is not None
    assert cache.lookup(question("b.example."))[0] is None
    assert cache.evictions == 1


def test_stale_window_then_gone() -> None:
    clock = Clock()
    cache = MessageCache(CacheConfig(stale_max_age=100), clock)
    cache.store(question("s.example."), answer("s.example.", 10, "192.0.2.1"))
    clock.now += 50
    assert cache.lookup(question("s.example."))[0] is not None
    clock.now += 100
    assert cache.lookup(question("s.example.")) == (None, False)
    no_stale = MessageCache(CacheConfig(serve_stale=False), clock)
    no_stale.store(question("s.example."), answer("s.example.", 10, "192.0.2.1"))
    clock.now += 11
    assert no_stale.lookup(question("s.example.")) == (None, False)


def test_prefetch_only_for_popular_entries_near_expiry() -> None:
    clock = Clock()
    cache = MessageCache(CacheConfig(prefetch_min_hits=2, prefetch_window=0.1), clock)
    entry = cache.store(question("p.example."), answer("p.example.", 100, "192.0.2.1"))
    assert entry is not None
    entry.hits = 5
    clock.now += 80
    assert not cache.due_for_prefetch(entry)
    clock.now += 11
    assert cache.due_for_prefetch(entry)
    entry.hits = 1
    assert not cache.due_for_prefetch(entry)


def test_dnssec_ok_and_cd_are_separate_entries() -> None:
    cache = MessageCache(CacheConfig(), Clock())
    cache.store(question("d.example."), answer("d.example.", 60, "192.0.2.1"))
    signed = Question(dns.name.from_text("d.example."), 1, 1, dnssec_ok=True)
    assert cache.lookup(signed)[0] is None
