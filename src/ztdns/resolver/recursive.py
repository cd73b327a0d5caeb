"""Iterative resolution from the root: the ``Resolver`` for ``mode = "recursive"`` and the DNSSEC ``Fetcher``.

Walks referrals from the root hints (or cached delegations) with QNAME minimisation (RFC 9156), randomises
query-name case (0x20), IDs and source ports, and drops anything a server says outside its bailiwick: glue
for names outside the referring zone is never trusted and out-of-zone records are never cached. Limits on
referrals, upstream queries per client query, glueless name-server lookups and CNAME chain length keep
NXNS-style amplification out. With a :class:`~ztdns.dnssec.validator.Validator` attached, final answers are
validated and cached together with their security status.

This module orchestrates; the parts live beside it: delegation tracking and server selection
(``delegation.py``), what a response is and what of it to keep (``classify.py``), the network exchange
(``upstream.py``, injected: tests replay scripted servers through it) and the answer cache (``answers.py``).
Client data touched: the names asked (they go upstream); each exchange is handed to ``on_exchange`` — the observe
stage's, for dnstap RESOLVER messages — and logged nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec.aggressive import DenialCache
from ztdns.dnssec.names import wire_key
from ztdns.dnssec.validator import Security, Validator, Verdict
from ztdns.model import EDE, Question, Reason, Resolution
from ztdns.resolver.answers import AnswerCache, chain_answer, min_ttl, response, strip_dnssec
from ztdns.resolver.classify import CnameLoop, Lame, ResponseType, classify, cname_target, referral_ds, scrub
from ztdns.resolver.delegation import Delegation, Delegations, ServerSelection
from ztdns.resolver.hints import load_hints
from ztdns.resolver.upstream import Exchange, ForgedAnswer, IterativeQuery, NetworkExchange
from ztdns.wire.header import rcode_of
from ztdns.wire.parse import parse_message

_GLUELESS_PER_REFERRAL = 3  # NS names without glue resolved per referral (NXNS mitigation)
_GLUELESS_PARALLEL = 2  # of those, looked up at once
_SERVERS_PER_GLUELESS = 2  # addresses of a name server looked up that are tried for one question
_NS_DEPTH = 3  # nesting of name-server address lookups
_SERVERS_PER_QUERY = 4  # addresses of a zone tried for one question
_BOGUS_RETRIES = 2  # other servers asked for an answer that failed validation


class ResolutionFailed(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.text)
        self.reason = reason


@dataclass
class _Budget:
    """Upstream queries one client query may still cause, and the name servers whose addresses it is looking up
    (a name server found again while looking up its own address is a loop: skipped)."""

    left: int
    resolving: Counter[dns.name.Name] = field(default_factory=Counter)  # lookups under way by name
    avoid: frozenset[str] = frozenset()  # servers whose answer did not validate: asked again only as a last resort
    answered: str = ""  # the server that gave the last usable answer
    sources: list[str] = field(default_factory=list)  # the servers that gave the final answer of each CNAME hop

    def spend(self) -> None:
        if self.left <= 0:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, "upstream query limit reached"))
        self.left -= 1


class RecursiveResolver:
    def __init__(
        self,
        config: RecursionConfig,
        exchange: Exchange | None = None,
        clock: Callable[[], float] = time.time,
        max_ttl: int | None = None,
        negative_max_ttl: int | None = None,
    ) -> None:
        self.config = config
        # Set after construction: the validator fetches DS/DNSKEY through this resolver.
        self.validator: Validator | None = None
        self.exchange: Exchange = (
            exchange if exchange is not None else NetworkExchange(tuple(config.outgoing_addresses))
        )
        self._clock = clock
        self._delegations = Delegations(load_hints(config.root_hints), clock)
        self._servers = ServerSelection(config.ipv4, config.ipv6, config.allow_query_localhost, clock)
        self._address_types = [dns.rdatatype.A] if config.ipv4 else []
        if config.ipv6:
            self._address_types.append(dns.rdatatype.AAAA)
        self._cache = AnswerCache(config.cache_entries, max_ttl, negative_max_ttl, clock)
        self._inflight: dict[tuple[bytes, int, bool], asyncio.Future[dns.message.Message]] = {}
        self._lookups: set[asyncio.Task[list[str]]] = set()  # name servers' address lookups under way
        self._key_fetches: set[asyncio.Task[dns.message.Message | None]] = set()  # DNSKEY/DS fetched ahead
        self._denials = DenialCache()
        self.upstream_queries = 0
        self.aggressive_answers = 0  # negative answers synthesised from cached denials (RFC 8198)
        # Upstream traffic for the sinks (dnstap RESOLVER_QUERY/RESPONSE), set by the handler: called on the event
        # loop with (transport, server address, port, query bytes, response bytes, time.time() the query was sent).
        self.on_exchange: Callable[[str, str, int, bytes, bytes, float], None] | None = None

    @property
    def forged_dropped(self) -> int:
        """Datagrams dropped as forged by the network exchange (0 with another exchange)."""
        return getattr(self.exchange, "forged_dropped", 0)

    @property
    def open_sockets(self) -> int:
        """Upstream sockets open now (0 with an exchange that opens none)."""
        return getattr(self.exchange, "open_sockets", 0)

    # ----- public ------------------------------------------------------------------------------------------

    async def resolve(self, question: Question) -> Resolution:
        try:
            # A timeout scope, not wait_for: no extra task (and loop turn) per client query.
            async with asyncio.timeout(self.config.total_timeout):
                found, verdict = await self._lookup(
                    question.name, dns.rdatatype.RdataType(question.rdtype), validate=not question.checking_disabled
                )
        except ResolutionFailed as exc:
            return Resolution(None, exc.reason)
        except TimeoutError:
            return Resolution(None, Reason(EDE.NO_REACHABLE_AUTHORITY, f"{question.name}: resolution timed out"))
        rdclass = dns.rdataclass.RdataClass(question.rdclass)
        found.question = [dns.rrset.RRset(question.name, rdclass, dns.rdatatype.RdataType(question.rdtype))]
        if verdict is not None and verdict.bogus:
            failed = response(dns.rcode.SERVFAIL, [], [])
            failed.question = found.question
            return Resolution(failed, verdict.reason, security=verdict.security.value)
        if verdict is not None and verdict.security is Security.SECURE:
            found.flags |= dns.flags.AD
        if self.config.minimal_responses and found.answer:
            found.authority = [r for r in found.authority if _is_denial(r)]  # wildcard proofs stay (DO clients)
        if not question.dnssec_ok:
            strip_dnssec(found, question.rdtype)
        security = verdict.security.value if verdict is not None else None
        reason = verdict.reason if verdict is not None and verdict.reason is not None else None
        return Resolution(found, reason, security=security)

    async def fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message | None:
        """The validator's fetcher: unvalidated data with RRSIGs (what CD=1 returns)."""
        try:
            found, _ = await self._lookup(name, rdtype, validate=False)
        except ResolutionFailed:
            return None
        return found

    def collect(self) -> Iterator[Metric]:
        """Validation failures (when validating) and recursion's defences at work."""
        if self.validator is not None:
            yield from self.validator.collect()
        yield CounterMetricFamily(
            "ztdns_recursion_upstream_queries", "Queries sent to authoritative servers", value=self.upstream_queries
        )
        yield CounterMetricFamily(
            "ztdns_recursion_forged_dropped",
            "Datagrams dropped as forged: another ID, unparsable, or the question in another case (0x20)",
            value=self.forged_dropped,
        )
        yield GaugeMetricFamily(
            "ztdns_recursion_upstream_sockets",
            "Sockets open to authoritative servers now (each closed when its query ends or is cancelled)",
            value=self.open_sockets,
        )
        yield CounterMetricFamily(
            "ztdns_recursion_aggressive_answers",
            "Negative answers synthesised from cached validated NSEC/NSEC3 (RFC 8198)",
            value=self.aggressive_answers,
        )

    async def close(self) -> None:
        for future in self._inflight.values():
            future.cancel()
        for task in list(self._lookups):
            task.cancel()
        for key_fetch in list(self._key_fetches):
            key_fetch.cancel()
        if isinstance(self.exchange, NetworkExchange):
            self.exchange.close()

    # ----- cache and coalescing -----------------------------------------------------------------------------

    async def _lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, validate: bool
    ) -> tuple[dns.message.Message, Verdict | None]:
        # RRSIGs asked for as such are not validated (there is no RRSIG over them), as Unbound does: no AD.
        validate = validate and self.validator is not None and rdtype != dns.rdatatype.RRSIG
        key = (wire_key(name), rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and (cached.verdict is not None or not validate):
            # CD=1 gets the data as published even when we already found it bogus.
            return cached.aged(now), cached.verdict if validate else None
        flight = (key[0], rdtype, validate)
        pending = self._inflight.get(flight)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[flight] = pending
            try:
                # Data cached without a verdict (a CNAME target met on the way, a validator fetch) is validated
                # as it is: the same upstream answer, without asking again (nor looking for a cached denial).
                found: dns.message.Message | None = None
                verdict = None
                if cached is not None:
                    found = cached.aged(now)
                elif validate:
                    found, verdict = await self._from_denials(name, rdtype)
                sources: list[str] = []
                if found is None:
                    budget = _Budget(self.config.max_queries)
                    found = await self._resolve_chain(name, rdtype, budget)
                    sources = budget.sources
                if validate and verdict is None:
                    assert self.validator is not None
                    verdict = await self.validator.validate(name, rdtype, found)
                    if verdict.bogus and sources:
                        found, verdict = await self._retry_bogus(name, rdtype, found, verdict, sources)
                    if verdict.security is Security.SECURE and self.config.aggressive_nsec:
                        self._denials.add(found, self._clock())
                self._cache.store(key, found, verdict)
                pending.set_result(found)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters get it too, no "never retrieved" warning
                raise
            finally:
                del self._inflight[flight]
            return found, verdict
        await asyncio.shield(pending)
        hit = self._cache.get(key)
        if hit is None:
            return pending.result(), None
        return hit.aged(self._clock()), hit.verdict if validate else None

    async def _retry_bogus(
        self,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        found: dns.message.Message,
        verdict: Verdict,
        sources: list[str],
    ) -> tuple[dns.message.Message, Verdict]:
        """An answer that failed validation is asked again at the zone's other servers (one of them may be
        broken or spoofed), a few times; if none validates, the EDE text names the servers that answered."""
        assert self.validator is not None
        tried = list(dict.fromkeys(sources))
        for _ in range(_BOGUS_RETRIES):
            budget = _Budget(self.config.max_queries, avoid=frozenset(tried))
            try:
                again = await self._resolve_chain(name, rdtype, budget)
            except ResolutionFailed:
                break  # no other server
            tried += [source for source in budget.sources if source not in tried]
            second = await self.validator.validate(name, rdtype, again)
            if not second.bogus:
                return again, second
        reason = verdict.reason
        if reason is not None:
            verdict = Verdict(verdict.security, Reason(reason.ede, f"{reason.text} (from {', '.join(tried)})"))
        return found, verdict

    async def _from_denials(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[dns.message.Message | None, Verdict | None]:
        """RFC 8198: a negative answer proven by validated NSEC/NSEC3 we already hold, without asking upstream.

        The synthesised response goes through the same validation as an upstream one and is used only if
        secure (a wildcard, an opt-out span or an expired record means: ask upstream)."""
        if not self.config.aggressive_nsec:
            return None, None
        candidate = self._denials.synthesise(name, rdtype, self._clock())
        if candidate is None:
            return None, None
        assert self.validator is not None
        verdict = await self.validator.check(name, rdtype, candidate)
        if verdict.security is not Security.SECURE:
            return None, None
        self.aggressive_answers += 1
        return candidate, verdict

    # ----- iteration ---------------------------------------------------------------------------------------

    async def _resolve_chain(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: _Budget
    ) -> dns.message.Message:
        """Resolve, following CNAMEs across zones (DNAME arrives as its synthesised CNAME).

        Each CNAME target's own answer (the rest of the chain from there) is cached too, unvalidated: a
        client asking for the target next is answered after validation, without asking upstream again."""
        hops: list[tuple[dns.name.Name, dns.message.Message]] = []
        sname = qname
        seen = {qname}
        for _ in range(self.config.max_cname_chain + 1):
            answer = await self._iterate(sname, rdtype, budget)
            hops.append((sname, answer))
            budget.sources.append(budget.answered)
            target = cname_target(answer, sname, rdtype)
            if target is None or rdtype == dns.rdatatype.CNAME:
                break
            if target in seen:
                raise ResolutionFailed(Reason(EDE.OTHER, f"{qname}: CNAME loop at {target}"))
            seen.add(target)
            sname = target
        else:
            raise ResolutionFailed(Reason(EDE.OTHER, f"{qname}: CNAME chain longer than {self.config.max_cname_chain}"))
        for index in range(1, len(hops)):
            key = (wire_key(hops[index][0]), rdtype)
            if key not in self._cache:
                self._cache.store(key, chain_answer(hops[index:]), None)
        return chain_answer(hops)

    async def _iterate(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: _Budget, depth: int = 0
    ) -> dns.message.Message:
        # DS lives on the parent side of a cut: start from the servers of the zone above qname.
        target = qname.parent() if rdtype == dns.rdatatype.DS and qname != dns.name.root else qname
        delegation = self._delegations.closest(target)
        if len(delegation.zone) == 1 and self.validator is not None:  # from the root (a cold start, mostly)
            self._fetch_root_keys_ahead(self.validator)
        minimise = self.config.qname_minimisation
        ask_depth = 0
        for _ in range(self.config.max_referrals + len(qname)):
            zone = delegation.zone
            ask_depth = max(ask_depth, len(zone) + 1)
            ask_name, ask_type = qname, rdtype
            if minimise and ask_depth < len(qname):
                # RFC 9156: reveal one more label at a time; A hides the real type better than NS.
                ask_name, ask_type = dns.name.Name(qname.labels[-ask_depth:]), dns.rdatatype.A
                if self._delegations.is_known_no_cut(ask_name, zone):
                    ask_depth += 1
                    continue
            try:
                answer, child = await self._ask(delegation, ask_name, ask_type, budget, depth)
            except ResolutionFailed:
                if ask_name is qname:  # not minimised (a minimised name is a proper suffix: never equal)
                    raise
                # RFC 9156 §2.3 (relaxed): servers that fail the minimised query (SERVFAIL, REFUSED, lame) are
                # asked the full name.
                minimise = False
                continue
            if child is not None:
                if not target.is_subdomain(child.zone):
                    raise ResolutionFailed(
                        Reason(EDE.NO_REACHABLE_AUTHORITY, f"{zone}: referral to {child.zone} for {qname} DS")
                    )
                delegation = await self._complete(child, budget, depth)
                continue
            if ask_name is qname:
                return answer
            if rcode_of(answer) == dns.rcode.NOERROR and cname_target(answer, ask_name, ask_type) is None:
                ask_depth += 1  # no zone cut at ask_name: reveal the next label to the same servers
                self._delegations.remember_no_cut(ask_name, zone, min_ttl(answer))
            else:
                minimise = False  # NXDOMAIN or CNAME on the way down: ask the full name (RFC 9156 §3)
        raise ResolutionFailed(
            Reason(EDE.NO_REACHABLE_AUTHORITY, f"{qname}: more than {self.config.max_referrals} referrals")
        )

    async def _complete(self, delegation: Delegation, budget: _Budget, depth: int) -> Delegation:
        """Make sure a new cut has addresses to ask (looking up glueless name servers if needed), remember it."""
        while not delegation.addresses and await self._look_up_servers(delegation, budget, depth):
            pass
        if not delegation.addresses:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, f"{delegation.zone}: no name server address"))
        self._delegations.remember(delegation)
        return delegation

    async def _look_up_servers(self, delegation: Delegation, budget: _Budget, depth: int) -> list[str]:
        """Addresses of the zone's name servers without (trusted) glue, as soon as one of them has some.

        The names are looked up from the root down like any name, a few at once (A, then AAAA), so a slow or
        broken one delays nothing: the first addresses found are returned, the other lookups go on and
        add theirs to the delegation when they end (the next caller waits for them before starting others).
        Bounded (NXNS): a few names per delegation, a nesting depth, never a name already being looked up for
        this query, never a name inside the zone (it needs glue). [] when there is nothing left to look up."""
        pending = delegation.pending
        while True:
            self._start_lookups(delegation, budget, depth)
            if not pending:
                return []
            done, _ = await asyncio.wait(list(pending), return_when=asyncio.FIRST_COMPLETED)
            found = [address for task in done if not task.cancelled() for address in task.result()]
            if found:
                return found

    def _start_lookups(self, delegation: Delegation, budget: _Budget, depth: int) -> None:
        """Start looking up the next unresolved names until _GLUELESS_PARALLEL are under way."""
        while delegation.unresolved and depth < _NS_DEPTH:
            if len(set(delegation.pending.values())) >= _GLUELESS_PARALLEL:
                return
            name = delegation.unresolved.pop(0)
            delegation.lookups += 1
            if delegation.lookups > _GLUELESS_PER_REFERRAL:
                delegation.unresolved.clear()
                return
            if name.is_subdomain(delegation.zone) or budget.resolving[name]:
                continue
            self._start_lookup(delegation, name, self._address_types, budget, depth)

    def _start_lookup(
        self,
        delegation: Delegation,
        name: dns.name.Name,
        rdtypes: list[dns.rdatatype.RdataType],
        budget: _Budget,
        depth: int,
    ) -> None:
        """Look up one name server's addresses of the first type, adding them to its delegation; the next type's
        lookup starts when this one ends (after it, not beside it: it finds the name's zone cut known and asks
        one query)."""
        rdtype = rdtypes[0]

        async def look_up() -> list[str]:
            answer = None
            try:
                answer = await self._iterate(name, rdtype, budget, depth + 1)
            except ResolutionFailed:
                pass
            except BaseException:  # cancelled (close): nothing more starts
                budget.resolving[name] -= 1
                raise
            if len(rdtypes) > 1:  # started before this one is done: the name never looks free to a loop check
                self._start_lookup(delegation, name, rdtypes[1:], budget, depth)
            budget.resolving[name] -= 1
            if answer is None:
                return []
            found = [r.address for rrset in answer.answer if rrset.rdtype == rdtype for r in rrset]
            delegation.addresses.extend(found)
            return found

        budget.resolving[name] += 1
        task = asyncio.get_running_loop().create_task(look_up())
        delegation.pending[task] = name
        self._lookups.add(task)
        task.add_done_callback(functools.partial(self._lookup_ended, delegation))

    def _lookup_ended(self, delegation: Delegation, task: asyncio.Task[list[str]]) -> None:
        """Forget an ended lookup (its addresses are in the delegation already)."""
        delegation.pending.pop(task, None)
        self._lookups.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a lookup nobody waits for any more ends quietly

    # ----- talking to servers -----------------------------------------------------------------------------

    async def _ask(
        self,
        delegation: Delegation,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        budget: _Budget,
        depth: int,
    ) -> tuple[dns.message.Message, Delegation | None]:
        """The first usable answer from the zone's servers (scrubbed), and the referral it is, if it is one.

        A few of the known addresses are tried in order of preference; when they all fail, the name servers
        without glue are looked up and their addresses tried too (also those that lookups still under way from
        an earlier referral found meanwhile)."""
        problems: list[str] = []
        tried: set[str] = set()
        offered: set[str] = set()  # addresses the loop has seen (tried, avoided or over the allowance)
        allowance = _SERVERS_PER_QUERY
        while True:
            candidates = [a for a in self._servers.order(delegation.addresses) if a not in offered]
            offered.update(delegation.addresses)
            for address in candidates:
                if address in budget.avoid or allowance <= 0:
                    continue
                tried.add(address)
                allowance -= 1
                result = await self._try(address, delegation.zone, name, rdtype, budget, problems)
                if result is not None:
                    return result
            await self._look_up_servers(delegation, budget, depth)
            if offered.issuperset(delegation.addresses):
                break
            allowance = _SERVERS_PER_GLUELESS
        if not tried:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, f"{delegation.zone}: no usable server address"))
        raise ResolutionFailed(
            Reason(
                EDE.NO_REACHABLE_AUTHORITY,
                f"{delegation.zone}: no server answered for {name}: {'; '.join(problems)}",
            )
        )

    async def _try(
        self,
        address: str,
        zone: dns.name.Name,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        budget: _Budget,
        problems: list[str],
    ) -> tuple[dns.message.Message, Delegation | None] | None:
        """One server's answer, classified and scrubbed; None (and the problem noted) if it has none to give."""
        budget.spend()
        try:
            answer = await self._query(address, name, rdtype)
        except (dns.exception.DNSException, OSError, TimeoutError, ForgedAnswer) as exc:
            problems.append(f"{address}: {type(exc).__name__}")
            return None
        rcode = rcode_of(answer)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            problems.append(f"{address}: {dns.rcode.to_text(dns.rcode.Rcode.make(rcode))}")
            return None
        try:
            classified = classify(answer, zone, name, rdtype, self._clock(), self.config.harden_glue)
        except Lame as lame:
            problems.append(f"{address}: {lame}")
            return None
        except CnameLoop as loop:
            raise ResolutionFailed(Reason(EDE.OTHER, f"{name}: {loop}")) from None
        budget.answered = address
        child = classified.referral
        if classified.kind is ResponseType.REFERRAL and child is not None:
            ds = referral_ds(answer, child.zone)
            if ds:  # the signed DS in a referral is what the validator will ask for next: keep it
                key = (wire_key(child.zone), dns.rdatatype.DS)
                self._cache.store(key, response(dns.rcode.NOERROR, ds, []), None)
                self._fetch_ahead(child.zone, dns.rdatatype.DNSKEY)
            elif any(r.rdtype in _DENIAL_TYPES for r in answer.authority):
                # A signed parent proving the cut unsigned: the validator will ask for that proof as the DS answer.
                self._fetch_ahead(child.zone, dns.rdatatype.DS)
        return scrub(answer, zone), child

    def _fetch_ahead(self, zone: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        """Ask for what the validator will need of a zone met in a referral — a signed zone's DNSKEY set, or the
        parent's proof that an unsigned cut has no DS — now, beside the query that goes on to the zone's servers,
        rather than after it (for keys, Unbound's ``prefetch-key``): one round trip less on the way to a
        validated answer from a zone not met before. The validator's own fetch joins this one (or finds it
        cached); nothing is fetched when not validating or when the answer is cached or coming."""
        if self.validator is None:
            return
        key = wire_key(zone)
        if (key, rdtype) in self._cache or (key, rdtype, False) in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self.fetch(zone, rdtype))
        self._key_fetches.add(task)
        task.add_done_callback(self._key_fetch_ended)

    def _fetch_root_keys_ahead(self, validator: Validator) -> None:
        """The root's DNSKEY set, when the root is a trust anchor, beside the first query to its servers: the
        validator starts every chain of trust there."""
        if validator.anchors.closest(dns.name.root) is not None:
            self._fetch_ahead(dns.name.root, dns.rdatatype.DNSKEY)

    def _key_fetch_ended(self, task: asyncio.Task[dns.message.Message | None]) -> None:
        self._key_fetches.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed fetch is the validator's to find out about, not the loop's

    async def _query(self, address: str, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        query = IterativeQuery.random(name, rdtype, self.config.edns_payload)
        timeout = self.config.timeout
        port = self.config.query_port
        start = time.monotonic()
        self.upstream_queries += 1
        try:
            wire = query.to_wire(edns=True)
            answer = parse_message(await self._exchange(wire, address, port, timeout))
            if rcode_of(answer) in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and answer.edns < 0:
                # EDNS fallback for servers that reject OPT records.
                wire = query.to_wire(edns=False)
                answer = parse_message(await self._exchange(wire, address, port, timeout))
            if int(answer.flags) & _TC:
                answer = parse_message(await self._exchange(wire, address, port, timeout, tcp=True))
        except (TimeoutError, OSError):
            self._servers.failed(address, timeout)
            raise
        self._servers.answered(address, time.monotonic() - start)
        return answer

    async def _exchange(self, wire: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        """One exchange, shown to the sinks (through ``on_exchange``) when it got a response."""
        on_exchange = self.on_exchange
        if on_exchange is None:
            return await self.exchange.exchange(wire, address, port, timeout, tcp)
        sent = time.time()
        reply = await self.exchange.exchange(wire, address, port, timeout, tcp)
        on_exchange("tcp" if tcp else "udp", address, port, wire, reply, sent)
        return reply


_DENIAL_TYPES = (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)
_TC = int(dns.flags.TC)  # as an int: ``&`` on dnspython's Flag enum is Python code


def _is_denial(rrset: dns.rrset.RRset) -> bool:
    return rrset.rdtype in _DENIAL_TYPES or (rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers in _DENIAL_TYPES)
