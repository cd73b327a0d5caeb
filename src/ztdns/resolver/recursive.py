"""Iterative resolution from the root: the ``Resolver`` for ``mode = "recursive"`` and the DNSSEC ``Fetcher``.

Walks referrals from the root hints (or cached delegations) with QNAME minimisation (RFC 9156), randomises
query-name case (0x20), IDs and source ports, and drops anything a server says outside its bailiwick: glue
for names outside the referring zone is never trusted and out-of-zone records are never cached. Limits on
referrals, upstream queries per client query, glueless name-server lookups and CNAME chain length keep
NXNS-style amplification out. With a :class:`~ztdns.dnssec.validator.Validator` attached, final answers are
validated and cached together with their security status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS

from ztdns.config.model import RecursionConfig
from ztdns.dnssec.aggressive import DenialCache
from ztdns.dnssec.names import ancestry, wire_key
from ztdns.dnssec.validator import Security, Validator, Verdict
from ztdns.model import EDE, Question, Reason, Resolution, copy_rrset
from ztdns.resolver.hints import load_hints
from ztdns.wire.parse import parse_message

_EDNS_PAYLOAD = 1232
_GLUELESS_PER_REFERRAL = 3  # NS names without glue resolved per referral (NXNS mitigation)
_NS_DEPTH = 3  # nesting of name-server address lookups
_USABLE_MEMO = 4096
_NO_CUT_MEMO = 16_384
_DELEGATIONS_MAX = 100_000


class ResolutionFailed(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.text)
        self.reason = reason


@dataclass
class _Budget:
    """Upstream queries one client query may still cause."""

    left: int

    def spend(self) -> None:
        if self.left <= 0:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, "upstream query limit reached"))
        self.left -= 1


@dataclass
class _Delegation:
    zone: dns.name.Name
    names: list[dns.name.Name]
    addresses: list[str]
    expires: float


@dataclass
class _ServerStats:
    srtt: float = 0.0  # seconds; 0 = never measured (tried first, in random order)
    failures: int = 0
    held_until: float = 0.0


@dataclass
class _Cached:
    """A resolved answer as RRsets, not wire: a hit costs a few object copies instead of a parse.

    The RRsets are never changed after storing (hits get copies when their TTLs must count down)."""

    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...]
    authority: tuple[dns.rrset.RRset, ...]
    stored: float
    expires: float
    verdict: Verdict | None = None


def _randomise_case(name: dns.name.Name) -> dns.name.Name:
    """0x20: every letter's case flipped by its own random bit.

    The bits, like query IDs, come from the operating system's CSPRNG (``secrets``): the ``random`` module's
    generator can be reconstructed from its outputs, and an attacker who can predict them only has to guess the
    source port to forge an answer. Per label, as integers: (random bits) AND (0x20 at each letter) XOR label."""
    bits = secrets.randbits(2048)  # one draw (a system call) for the whole name: at most 255 octets
    labels = []
    for label in name.labels:
        size = len(label)
        mask = int.from_bytes(label.translate(_CASE_BIT), "big") & bits
        labels.append((int.from_bytes(label, "big") ^ mask).to_bytes(size, "big"))
        bits >>= 8 * size
    return dns.name.Name(labels)


# 0x20 at the octets that are ASCII letters (the bit that flips their case), 0 elsewhere.
_CASE_BIT = bytes(0x20 if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A else 0 for c in range(256))


def _min_ttl(message: dns.message.Message) -> int:
    ttls = [rrset.ttl for section in (message.answer, message.authority) for rrset in section]
    return min(ttls, default=0)


class RecursiveResolver:
    def __init__(self, config: RecursionConfig) -> None:
        self.config = config
        # Set after construction: the validator fetches DS/DNSKEY through this resolver.
        self.validator: Validator | None = None
        self._hints = load_hints(config.root_hints)
        self._delegations: dict[bytes, _Delegation] = {}  # by the zone's wire key (ztdns.dnssec.names)
        # QNAME minimisation's findings: names the zone's own servers answered (no zone cut there), with the
        # zone and until when. The next name below them skips straight to the next label, as Unbound does.
        self._no_cut: dict[bytes, tuple[bytes, float]] = {}  # name's wire key -> (zone's wire key, until)
        self._servers: dict[str, _ServerStats] = {}
        self._usable_memo: dict[str, bool] = {}  # address -> may be asked (parsing addresses is not free)
        # Keyed by names' wire keys (ztdns.dnssec.names): they hash and compare in C, a Name in Python.
        self._cache: OrderedDict[tuple[bytes, int], _Cached] = OrderedDict()
        self._inflight: dict[tuple[bytes, int, bool], asyncio.Future[dns.message.Message]] = {}
        self._denials = DenialCache()
        self.upstream_queries = 0
        self.forged_dropped = 0
        self.aggressive_answers = 0  # negative answers synthesised from cached denials (RFC 8198)

    # ----- public ------------------------------------------------------------------------------------------

    async def resolve(self, question: Question) -> Resolution:
        try:
            # A timeout scope, not wait_for: no extra task (and loop turn) per client query.
            async with asyncio.timeout(self.config.total_timeout):
                response, verdict = await self._lookup(
                    question.name, dns.rdatatype.RdataType(question.rdtype), validate=not question.checking_disabled
                )
        except ResolutionFailed as exc:
            return Resolution(None, exc.reason)
        except TimeoutError:
            return Resolution(None, Reason(EDE.NO_REACHABLE_AUTHORITY, f"{question.name}: resolution timed out"))
        rdclass = dns.rdataclass.RdataClass(question.rdclass)
        response.question = [dns.rrset.RRset(question.name, rdclass, dns.rdatatype.RdataType(question.rdtype))]
        if verdict is not None and verdict.bogus:
            query = dns.message.make_query(question.name, dns.rdatatype.RdataType(question.rdtype))
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return Resolution(failed, verdict.reason, security=verdict.security.value)
        if verdict is not None and verdict.security is Security.SECURE:
            response.flags |= dns.flags.AD
        if not question.dnssec_ok:
            _strip_dnssec(response)
        security = verdict.security.value if verdict is not None else None
        reason = verdict.reason if verdict is not None and verdict.reason is not None else None
        return Resolution(response, reason, security=security)

    async def fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message | None:
        """The validator's fetcher: unvalidated data with RRSIGs (what CD=1 returns)."""
        try:
            response, _ = await self._lookup(name, rdtype, validate=False)
        except ResolutionFailed:
            return None
        return response

    async def close(self) -> None:
        for future in self._inflight.values():
            future.cancel()

    # ----- cache and coalescing -----------------------------------------------------------------------------

    async def _lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, validate: bool
    ) -> tuple[dns.message.Message, Verdict | None]:
        validate = validate and self.validator is not None
        key = (wire_key(name), rdtype)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached.expires <= now:
            cached = None
        if cached is not None and (cached.verdict is not None or not validate):
            self._cache.move_to_end(key)
            # CD=1 gets the data as published even when we already found it bogus.
            return _aged(cached, now), cached.verdict if validate else None
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
                    found = _aged(cached, now)
                elif validate:
                    found, verdict = await self._from_denials(name, rdtype)
                if found is None:
                    found = await self._resolve_chain(name, rdtype, _Budget(self.config.max_queries))
                response = found
                if validate and verdict is None:
                    assert self.validator is not None
                    verdict = await self.validator.validate(name, rdtype, response)
                    if verdict.security is Security.SECURE and self.config.aggressive_nsec:
                        self._denials.add(response, time.time())
                self._store(key, response, verdict)
                pending.set_result(response)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters get it too, no "never retrieved" warning
                raise
            finally:
                del self._inflight[flight]
            return response, verdict
        await asyncio.shield(pending)
        hit = self._cache.get(key)
        if hit is None:
            return pending.result(), None
        return _aged(hit, time.time()), hit.verdict if validate else None

    async def _from_denials(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[dns.message.Message | None, Verdict | None]:
        """RFC 8198: a negative answer proven by validated NSEC/NSEC3 we already hold, without asking upstream.

        The synthesised response goes through the same validation as an upstream one and is used only if
        secure (a wildcard, an opt-out span or an expired record means: ask upstream)."""
        if not self.config.aggressive_nsec:
            return None, None
        candidate = self._denials.synthesise(name, rdtype, time.time())
        if candidate is None:
            return None, None
        assert self.validator is not None
        verdict = await self.validator.check(name, rdtype, candidate)
        if verdict.security is not Security.SECURE:
            return None, None
        self.aggressive_answers += 1
        return candidate, verdict

    def _store(self, key: tuple[bytes, int], response: dns.message.Message, verdict: Verdict | None) -> None:
        if self.config.cache_entries == 0:
            return
        ttl = _min_ttl(response)
        if verdict is not None and verdict.bogus:
            ttl = min(ttl, 60)
        now = time.time()
        self._cache[key] = _Cached(
            response.rcode(), tuple(response.answer), tuple(response.authority), now, now + ttl, verdict
        )
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_entries:
            self._cache.popitem(last=False)

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
            response = await self._iterate(sname, rdtype, budget)
            hops.append((sname, response))
            target = _cname_target(response, sname, rdtype)
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
                self._store(key, _chain_answer(hops[index:]), None)
        return _chain_answer(hops)

    def _closest_delegation(self, name: dns.name.Name) -> _Delegation:
        now = time.time()
        for key in ancestry(name)[:-1]:  # the name, then each ancestor below the root
            delegation = self._delegations.get(key)
            if delegation is not None and delegation.expires > now and delegation.addresses:
                return delegation
        return _Delegation(dns.name.root, [n for n, _ in self._hints], [a for _, a in self._hints], float("inf"))

    async def _iterate(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: _Budget, depth: int = 0
    ) -> dns.message.Message:
        # DS lives on the parent side of a cut: start from the servers of the zone above qname.
        target = qname.parent() if rdtype == dns.rdatatype.DS and qname != dns.name.root else qname
        delegation = self._closest_delegation(target)
        minimise = self.config.qname_minimisation
        ask_depth = 0
        for _ in range(self.config.max_referrals + len(qname)):
            zone = delegation.zone
            ask_depth = max(ask_depth, len(zone) + 1)
            ask_name, ask_type = qname, rdtype
            if minimise and ask_depth < len(qname):
                # RFC 9156: reveal one more label at a time; A hides the real type better than NS.
                ask_name, ask_type = dns.name.Name(qname.labels[-ask_depth:]), dns.rdatatype.A
                known = self._no_cut.get(wire_key(ask_name))
                if known is not None and known[0] == wire_key(zone) and known[1] > time.time():
                    ask_depth += 1
                    continue
            response, referral = await self._ask(delegation, ask_name, ask_type, budget)
            if referral is not None:
                if not target.is_subdomain(referral.zone):
                    raise ResolutionFailed(
                        Reason(EDE.NO_REACHABLE_AUTHORITY, f"{zone}: referral to {referral.zone} for {qname} DS")
                    )
                delegation = await self._complete(referral, budget, depth)
                continue
            if ask_name == qname:
                return response
            if response.rcode() == dns.rcode.NOERROR and _cname_target(response, ask_name, ask_type) is None:
                ask_depth += 1  # no zone cut at ask_name: reveal the next label to the same servers
                self._remember_no_cut(ask_name, zone, response)
            else:
                minimise = False  # NXDOMAIN or CNAME on the way down: ask the full name (RFC 9156 §3)
        raise ResolutionFailed(
            Reason(EDE.NO_REACHABLE_AUTHORITY, f"{qname}: more than {self.config.max_referrals} referrals")
        )

    def _remember_no_cut(self, name: dns.name.Name, zone: dns.name.Name, response: dns.message.Message) -> None:
        if len(self._no_cut) >= _NO_CUT_MEMO:
            self._no_cut.clear()
        self._no_cut[wire_key(name)] = (wire_key(zone), time.time() + min(_min_ttl(response), 86_400))

    def _referral(self, response: dns.message.Message, zone: dns.name.Name, qname: dns.name.Name) -> _Delegation | None:
        """A downward referral from ``zone`` toward ``qname``, keeping only in-bailiwick glue."""
        if response.answer or response.rcode() != dns.rcode.NOERROR or response.flags & dns.flags.AA:
            return None
        ns_sets = [r for r in response.authority if r.rdtype == dns.rdatatype.NS]
        if not ns_sets:
            return None
        ns_set = ns_sets[0]
        child = ns_set.name
        if not (child.is_subdomain(zone) and child != zone and qname.is_subdomain(child)):
            raise _Lame(f"referral from {zone} to {child} is not downward toward {qname}")
        names = [rdata.target for rdata in ns_set if isinstance(rdata, NS)]
        addresses: list[str] = []
        for rrset in response.additional:
            # Glue only for name servers inside the referring zone (out-of-zone glue is never trusted).
            if (
                rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                and rrset.name in names
                and rrset.name.is_subdomain(zone)
            ):
                addresses.extend(rdata.address for rdata in rrset)
        ds = [r for r in response.authority if r.name == child and r.rdtype in (dns.rdatatype.DS,)]
        if ds:
            self._cache_referral_ds(response, child)
        # The zone as _scrub spells owner names (servers echo our 0x20 case into them).
        return _Delegation(child.canonicalize(), names, addresses, time.time() + min(ns_set.ttl, 86_400))

    def _cache_referral_ds(self, response: dns.message.Message, child: dns.name.Name) -> None:
        """The signed DS in a referral is what the validator will ask for next: keep it."""
        answer = [
            r
            for r in response.authority
            if r.name == child
            and (r.rdtype == dns.rdatatype.DS or (r.rdtype == dns.rdatatype.RRSIG and r.covers == dns.rdatatype.DS))
        ]
        self._store((wire_key(child), dns.rdatatype.DS), _response(dns.rcode.NOERROR, answer, []), None)

    async def _complete(self, delegation: _Delegation, budget: _Budget, depth: int) -> _Delegation:
        """Resolve addresses of glueless name servers (a few, never in a loop), then remember the cut."""
        if not delegation.addresses and depth < _NS_DEPTH:
            for name in delegation.names[:_GLUELESS_PER_REFERRAL]:
                if name.is_subdomain(delegation.zone):
                    continue  # would need the glue we were not given
                try:
                    response = await self._iterate(name, dns.rdatatype.A, budget, depth + 1)
                except (ResolutionFailed, _Lame):
                    continue
                delegation.addresses.extend(
                    rdata.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset
                )
                if delegation.addresses:
                    break
        if not delegation.addresses:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, f"{delegation.zone}: no name server address"))
        if len(self._delegations) >= _DELEGATIONS_MAX:  # zones that delegate every name must not grow it forever
            self._delegations.clear()
        self._delegations[wire_key(delegation.zone)] = delegation
        return delegation

    # ----- talking to servers -----------------------------------------------------------------------------

    def _usable(self, address: str) -> bool:
        usable = self._usable_memo.get(address)
        if usable is None:
            ip = ipaddress.ip_address(address)
            if ip.version == 6 and not self._ipv6:
                usable = False
            elif ip.is_loopback or ip.is_unspecified:
                usable = self.config.allow_query_localhost
            else:
                usable = True
            if len(self._usable_memo) >= _USABLE_MEMO:
                self._usable_memo.clear()
            self._usable_memo[address] = usable
        return usable

    _ipv6 = True

    def _order(self, addresses: list[str]) -> list[str]:
        now = time.time()
        usable = [a for a in dict.fromkeys(addresses) if self._usable(a)]
        random.shuffle(usable)
        stats = self._servers
        never = _ServerStats()

        def key(address: str) -> tuple[bool, float]:
            server = stats.get(address, never)
            return server.held_until > now, server.srtt

        usable.sort(key=key)
        return usable

    async def _ask(
        self, delegation: _Delegation, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: _Budget
    ) -> tuple[dns.message.Message, _Delegation | None]:
        """The first usable answer from the zone's servers (scrubbed), and the referral it is, if it is one."""
        addresses = self._order(delegation.addresses)
        if not addresses:
            raise ResolutionFailed(Reason(EDE.NO_REACHABLE_AUTHORITY, f"{delegation.zone}: no usable server address"))
        problems: list[str] = []
        for address in addresses[:4]:
            budget.spend()
            try:
                response = await self._query(address, name, rdtype)
            except (dns.exception.DNSException, OSError, TimeoutError, _Forged) as exc:
                problems.append(f"{address}: {type(exc).__name__}")
                continue
            if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                problems.append(f"{address}: {dns.rcode.to_text(response.rcode())}")
                continue
            try:
                referral = self._referral(response, delegation.zone, name)
            except _Lame as lame:
                problems.append(f"{address}: {lame}")
                continue
            return _scrub(response, delegation.zone), referral
        raise ResolutionFailed(
            Reason(
                EDE.NO_REACHABLE_AUTHORITY,
                f"{delegation.zone}: no server answered for {name}: {'; '.join(problems)}",
            )
        )

    async def _query(self, address: str, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        stats = self._servers.setdefault(address, _ServerStats())
        query = _Query(secrets.randbits(16), _randomise_case(name), rdtype)
        timeout = self.config.timeout
        port = self.config.query_port
        start = time.monotonic()
        self.upstream_queries += 1
        try:
            wire = query.to_wire(edns=True)
            response = await self._exchange(query, wire, address, timeout)
            if response.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP) and response.edns < 0:
                # EDNS fallback for servers that reject OPT records.
                wire = query.to_wire(edns=False)
                response = await self._exchange(query, wire, address, timeout)
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(dns.message.from_wire(wire), address, timeout, port=port)
                if not query.echoed_by(response):
                    self.forged_dropped += 1
                    raise _Forged(f"TCP answer from {address} does not match the query")
        except (dns.exception.Timeout, TimeoutError, OSError):
            stats.failures += 1
            stats.srtt = max(stats.srtt * 2, timeout)
            if stats.failures >= 3:
                stats.held_until = time.time() + min(60.0, 2.0**stats.failures)
            raise
        rtt = time.monotonic() - start
        stats.srtt = rtt if stats.srtt == 0 else 0.7 * stats.srtt + 0.3 * rtt
        stats.failures = 0
        return response

    async def _exchange(self, query: _Query, wire: bytes, address: str, timeout: float) -> dns.message.Message:
        """One UDP exchange on a fresh connected socket (a random source port the kernel picks).

        The connected socket only receives datagrams from the server's address and port. Anything else
        arriving on it — unparsable, another ID, or the question echoed in another case than we sent (0x20)
        — is a forgery (or garbage): it is counted and dropped, and we keep waiting for the real answer
        until the timeout, so a flood of forgeries can neither poison nor abort the query.
        """
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:  # non-blocking: no fcntl
            sock.connect((address, self.config.query_port))
            sock.send(wire)
            async with asyncio.timeout(timeout):
                while True:
                    wire = await loop.sock_recv(sock, 65535)
                    try:
                        response = parse_message(wire)
                    except dns.exception.DNSException:
                        response = None
                    if response is not None and query.echoed_by(response):
                        return response
                    self.forged_dropped += 1


class _Lame(Exception):
    pass


class _Forged(Exception):
    pass


_QUESTION_OPTIONAL = frozenset({dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED})
# The OPT record of every EDNS query: root owner, type 41, our UDP payload size, DO set, no options.
_OPT_RR = b"\x00" + struct.pack("!HHBBHH", dns.rdatatype.OPT, _EDNS_PAYLOAD, 0, 0, dns.flags.DO, 0)


@dataclass(frozen=True, slots=True)
class _Query:
    """One iterative query, rendered straight to wire: ID, the 0x20-cased name, type; RD clear, class IN.

    Building it from a template instead of a dnspython Message saves most of the per-query CPU."""

    id: int
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType

    def to_wire(self, edns: bool) -> bytes:
        header = struct.pack("!HHHHHH", self.id, 0, 1, 0, 0, 1 if edns else 0)
        name = self.name.to_wire()
        assert name is not None  # without a file to write to, to_wire returns the bytes
        question = name + struct.pack("!HH", self.rdtype, dns.rdataclass.IN)
        return header + question + _OPT_RR if edns else header + question

    def echoed_by(self, response: dns.message.Message) -> bool:
        """Is ``response`` an answer to this query: same ID, QR set, and the question echoed byte for byte (0x20)?

        Errors without a question section (FORMERR from servers that reject EDNS) pass: they carry no data.
        """
        if not response.flags & dns.flags.QR or response.id != self.id or dns.opcode.from_flags(response.flags):
            return False
        if not response.question:
            return response.rcode() in _QUESTION_OPTIONAL
        if len(response.question) != 1:
            return False
        echoed = response.question[0]
        return (
            echoed.name.labels == self.name.labels
            and echoed.rdtype == self.rdtype
            and echoed.rdclass == dns.rdataclass.IN
        )


def _scrub(response: dns.message.Message, zone: dns.name.Name) -> dns.message.Message:
    """Drop records a server for ``zone`` has no authority to give (out of bailiwick), and undo the 0x20 case
    randomisation servers echo into owner names."""
    # Compared as lower-cased label tuples (in C), not with Name.is_subdomain (a Python loop per label).
    suffix = tuple(map(bytes.lower, zone.labels))
    depth = len(suffix)
    for section in (response.answer, response.authority, response.additional):
        kept = []
        for rrset in section:
            labels = rrset.name.labels
            lowered = tuple(map(bytes.lower, labels))
            if lowered[-depth:] != suffix:
                continue
            if lowered != labels:  # most owner names are lower-case already: no new Name for those
                rrset.name = dns.name.Name(lowered)
            kept.append(rrset)
        section[:] = kept
    return response


def _cname_target(
    response: dns.message.Message, sname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.name.Name | None:
    """Where the answer's CNAME chain from ``sname`` ends without data of ``rdtype``, or None."""
    current = sname
    for _ in range(len(response.answer) + 1):
        if any(r.name == current and r.rdtype == rdtype for r in response.answer):
            return None
        cname = next((r for r in response.answer if r.name == current and r.rdtype == dns.rdatatype.CNAME), None)
        if cname is None:
            return current if current != sname else None
        rdata = cname[0]
        assert isinstance(rdata, CNAME)
        current = rdata.target
    return None


def _dedupe(rrsets: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
    seen: dict[tuple[dns.name.Name, int, int], dns.rrset.RRset] = {}
    for rrset in rrsets:
        seen.setdefault((rrset.name, rrset.rdtype, rrset.covers), rrset)
    return list(seen.values())


def _strip_dnssec(message: dns.message.Message) -> None:
    dnssec_types = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3}
    message.answer = [r for r in message.answer if r.rdtype not in dnssec_types]
    message.authority = [r for r in message.authority if r.rdtype not in dnssec_types]


def _response(
    rcode: dns.rcode.Rcode, answer: list[dns.rrset.RRset], authority: list[dns.rrset.RRset]
) -> dns.message.Message:
    """A recursion result: just flags, rcode and sections (callers set the question they answer)."""
    message = dns.message.Message(id=0)  # internal: the ID of the client's query is set on the way out
    message.flags = dns.flags.QR | dns.flags.RA
    message.set_rcode(rcode)
    message.answer = answer
    message.authority = authority
    return message


def _chain_answer(hops: list[tuple[dns.name.Name, dns.message.Message]]) -> dns.message.Message:
    """The answer to the first name of a CNAME chain: every hop's answer, the last hop's rcode and authority."""
    answer = [rrset for _, response in hops for rrset in response.answer]
    last = hops[-1][1]
    return _response(last.rcode(), _dedupe(answer), list(last.authority))


def _aged(cached: _Cached, now: float) -> dns.message.Message:
    """A cache hit as a fresh message; the cached RRsets are shared until their TTLs must count down."""
    elapsed = int(now - cached.stored)
    if not elapsed:
        return _response(cached.rcode, list(cached.answer), list(cached.authority))
    return _response(cached.rcode, _older(cached.answer, elapsed), _older(cached.authority, elapsed))


def _older(rrsets: tuple[dns.rrset.RRset, ...], elapsed: int) -> list[dns.rrset.RRset]:
    aged = []
    for rrset in rrsets:
        copy = copy_rrset(rrset)
        copy.ttl = max(0, rrset.ttl - elapsed)
        aged.append(copy)
    return aged
