"""DNSSEC validation (RFC 4033-4035, 5155, 6840): builds the chain of trust and checks a response against it.

The validator never opens a socket: it asks a :class:`Fetcher` for the DS and DNSKEY records it needs
(recursion, or the forwarder with DO=1 CD=1) and keeps the zone keys it proved in a small cache.
Cryptography is dnspython's; the decisions — which signatures count, which algorithms are supported
(RFC 8624), which denial proves what — are here and in :mod:`ztdns.dnssec.denial`.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
from cryptography.exceptions import InvalidSignature
from dns.dnssecalgs import get_algorithm_cls_from_dnskey
from dns.dnssecalgs.base import GenericPublicKey
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.DNAME import DNAME
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.RRSIG import RRSIG
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.dnssec import denial
from ztdns.dnssec.names import ancestry, wire_key
from ztdns.dnssec.signed import signed_data
from ztdns.dnssec.trust import Anchor, TrustAnchors
from ztdns.model import EDE, Reason
from ztdns.wire.header import rcode_of

# Validated by default ([dnssec] algorithms): RSASHA256, RSASHA512, ECDSA P-256/P-384, Ed25519, Ed448 (RFC 8624
# §3.1 MUST/RECOMMENDED). RSASHA1 and RSASHA1-NSEC3-SHA1 are off by default since RFC 9905 deprecated SHA-1 in
# DNSSEC (they can be switched on); RSAMD5, DSA, GOST and unknown numbers are never validated. Zones signed only
# with algorithms not validated are treated as unsigned (insecure, EDE 1).
SUPPORTED_ALGORITHMS = frozenset({8, 10, 13, 14, 15, 16})
# RFC 8624 §3.3: SHA-1 must still be validated; GOST and unknown digests are unsupported (EDE 2).
SUPPORTED_DIGESTS = frozenset({1, 2, 4})
_DS_HASHES = {1: hashlib.sha1, 2: hashlib.sha256, 4: hashlib.sha384}
# DNSKEY flags as plain ints: dnspython's flags are an enum.Flag, whose ``&`` is Python code.
_ZONE_FLAG = 0x0100
_REVOKE_FLAG = 0x0080
NSEC3_MAX_ITERATIONS = 50  # RFC 9276 §3.2: above this, NSEC3 proofs count as insecure
_MAX_CACHE = 10_000
_DENIAL_TYPES = (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)


class Security(enum.Enum):
    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    INDETERMINATE = "indeterminate"  # no trust anchor covers the name


@dataclass(frozen=True)
class Verdict:
    security: Security
    reason: Reason | None = None

    @property
    def bogus(self) -> bool:
        return self.security is Security.BOGUS


SECURE = Verdict(Security.SECURE)
INSECURE = Verdict(Security.INSECURE)


def _bogus(ede: EDE, text: str) -> Verdict:
    return Verdict(Security.BOGUS, Reason(ede, text))


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Bogus beats insecure beats secure; the first reason of the winning kind is kept."""
    result = SECURE
    rank = {Security.SECURE: 0, Security.INDETERMINATE: 1, Security.INSECURE: 2, Security.BOGUS: 3}
    for verdict in verdicts:
        if rank[verdict.security] > rank[result.security] or (
            verdict.security is result.security and result.reason is None and verdict.reason is not None
        ):
            result = verdict
    return result


class Fetcher(Protocol):
    """Fetches one RRset with DO=1 and CD=1. Returns the response, or None if nobody answered."""

    async def fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message | None: ...


@dataclass
class ZoneKeys:
    """The validation state at a name: the closest enclosing zone, and its keys if it is secure."""

    zone: dns.name.Name
    verdict: Verdict
    keys: tuple[DNSKEY, ...] | None = None
    expires: float = 0.0


@dataclass
class _Signed:
    rrset: dns.rrset.RRset
    sigs: list[RRSIG] = field(default_factory=list)


# A section's RRsets with their signatures, by (wire key of the owner, type).
_Section = dict[tuple[bytes, int], _Signed]


def _rrsets_with_sigs(section: Sequence[dns.rrset.RRset]) -> _Section:
    """Pair each RRset with the RRSIGs covering it (dnspython keeps them as separate RRsets)."""
    signed: _Section = {}
    sigs: list[dns.rrset.RRset] = []
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.RRSIG:
            sigs.append(rrset)
        else:
            signed.setdefault((wire_key(rrset.name), rrset.rdtype), _Signed(rrset))
    for rrset in sigs:
        owner = wire_key(rrset.name)
        for rrsig in rrset:
            assert isinstance(rrsig, RRSIG)
            entry = signed.get((owner, rrsig.type_covered))
            if entry is not None:
                entry.sigs.append(rrsig)
    return signed


def _describe(rrset: dns.rrset.RRset) -> str:
    return f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"


def verify(
    signed: _Signed,
    zone: dns.name.Name,
    keys: Iterable[dns.rdata.Rdata],
    now: float,
    algorithms: frozenset[int] = SUPPORTED_ALGORITHMS,
) -> Verdict:
    """Check that at least one RRSIG by a supported key of ``zone`` verifies ``signed.rrset`` at ``now``."""
    signer = wire_key(zone)
    usable = [s for s in signed.sigs if wire_key(s.signer) == signer and s.algorithm in algorithms]
    if not usable:
        what = _describe(signed.rrset)
        if signed.sigs and all(s.algorithm not in algorithms for s in signed.sigs):
            return _bogus(EDE.UNSUPPORTED_DNSKEY_ALGORITHM, f"{zone}: {what}: only unsupported algorithms")
        return _bogus(EDE.RRSIGS_MISSING, f"{zone}: {what}: no RRSIG from {zone}")
    # (EDE code, problem) per signature that failed; the description is built only for a failure (it is text).
    problems: list[tuple[EDE, str]] = []
    for rrsig in usable:
        if now > rrsig.expiration:
            problems.append((EDE.SIGNATURE_EXPIRED, "RRSIG expired"))
        elif now < rrsig.inception:
            problems.append((EDE.SIGNATURE_NOT_YET_VALID, "RRSIG not yet valid"))
        elif not _signature_verifies(signed.rrset, rrsig, keys):
            problems.append((EDE.DNSSEC_BOGUS, "signature does not verify"))
        else:
            return SECURE
    what = _describe(signed.rrset)
    failures = [_bogus(ede, f"{zone}: {what}: {problem}") for ede, problem in problems]
    # Prefer the most specific explanation: a time problem over a generic bogus.
    failures.sort(key=lambda v: v.reason is not None and v.reason.ede == EDE.DNSSEC_BOGUS)
    return failures[0]


def dnskey_rdata(key: DNSKEY) -> bytes:
    """The DNSKEY's RDATA in wire form: what its key tag and DS digests are computed over, and its identity in
    the key cache (a DNSKEY object hashes by rendering itself to wire in Python, on every dictionary lookup)."""
    return struct.pack("!HBB", key.flags, key.protocol, key.algorithm) + key.key


def key_tag(rdata: bytes, algorithm: int) -> int:
    """RFC 4034 Appendix B over a DNSKEY RDATA, as dnspython's ``key_id``: the big-endian 16-bit words summed
    (high bytes at even offsets, low bytes at odd ones: two slices summed in C), the carry folded in once."""
    if algorithm == 1:  # RSAMD5: the last 16 bits of the modulus
        return (rdata[-3] << 8) + rdata[-2]
    total = (sum(rdata[0::2]) << 8) + sum(rdata[1::2])
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def ds_digest(zone: dns.name.Name, rdata: bytes, digest_type: int) -> bytes:
    """The DS digest of a DNSKEY (RFC 4034 §5.1.4, digest types 1, 2 and 4), as ``dns.dnssec.make_ds`` has it."""
    return _DS_HASHES[digest_type](wire_key(zone) + rdata).digest()


class _KeyCache:
    """What verifying with a DNSKEY needs and dnspython recomputes on every signature: the parsed public key,
    keyed by the key's RDATA; and which signatures already verified (an SOA or NSEC record comes back in answer
    after answer, and answers synthesised from cached denials are checked again)."""

    def __init__(self, limit: int = _MAX_CACHE) -> None:
        self.limit = limit
        self.public: dict[bytes, GenericPublicKey | None] = {}
        self.verified: dict[tuple[bytes, bytes], bytes] = {}  # (signature, signed data) -> the key's RDATA

    def public_key(self, key: DNSKEY, rdata: bytes) -> GenericPublicKey | None:
        """The key (``rdata`` is its RDATA) ready to verify with, or None when its bytes are not a valid key of
        its algorithm."""
        if rdata in self.public:
            return self.public[rdata]
        if len(self.public) >= self.limit:
            self.public.clear()
        try:
            public: GenericPublicKey | None = get_algorithm_cls_from_dnskey(key).public_cls.from_dnskey(key)
        except (dns.exception.DNSException, ValueError):
            public = None
        self.public[rdata] = public
        return public


_keys = _KeyCache()


def _signature_verifies(rrset: dns.rrset.RRset, rrsig: RRSIG, keys: Iterable[dns.rdata.Rdata]) -> bool:
    """RFC 4035 §5.3: does ``rrsig`` (time already checked) verify ``rrset`` with one of ``keys``?

    dnspython's ``validate_rrsig`` without its per-call key parsing and key-tag computing, and with the signed
    data built by :func:`ztdns.dnssec.signed.signed_data`: the candidate keys, the bytes and the cryptography
    are the same."""
    if rrsig.type_covered != rrset.rdtype or rrsig.rdclass != rrset.rdclass:
        return False
    candidates: dict[bytes, DNSKEY] = {}  # by RDATA
    for key in keys:
        if not isinstance(key, DNSKEY):
            continue
        flags = int(key.flags)
        if (
            key.algorithm == rrsig.algorithm
            and flags & _ZONE_FLAG
            and key.protocol == 3
            # A revoked key may only sign the DNSKEY RRset (RFC 5011 §2.1).
            and (not flags & _REVOKE_FLAG or rrsig.type_covered == dns.rdatatype.DNSKEY)
        ):
            rdata = dnskey_rdata(key)
            if key_tag(rdata, key.algorithm) == rrsig.key_tag:
                candidates.setdefault(rdata, key)
    if not candidates:
        return False
    try:
        data = signed_data(rrset, rrsig)
    except (dns.exception.DNSException, ValueError):
        return False
    memo = (rrsig.signature, data)
    if _keys.verified.get(memo) in candidates:
        return True
    for rdata, key in candidates.items():
        public = _keys.public_key(key, rdata)
        if public is None:
            continue
        try:
            public.verify(rrsig.signature, data)
        except (InvalidSignature, dns.exception.DNSException, ValueError):
            continue
        if len(_keys.verified) >= _keys.limit:
            _keys.verified.clear()
        _keys.verified[memo] = rdata
        return True
    return False


def _ttl_of(*rrsets: dns.rrset.RRset | dns.rdataset.Rdataset | None) -> int:
    ttls = [r.ttl for r in rrsets if r is not None]
    return min(ttls, default=300)


class Validator:
    def __init__(
        self,
        fetcher: Fetcher,
        anchors: TrustAnchors,
        *,
        nsec3_max_iterations: int = NSEC3_MAX_ITERATIONS,
        clock: Callable[[], float] = time.time,
        algorithms: frozenset[int] = SUPPORTED_ALGORITHMS,
    ) -> None:
        self.fetcher = fetcher
        self.algorithms = algorithms  # validated; zones signed only with others are insecure (EDE 1)
        self.anchors = anchors
        self.nsec3_max_iterations = nsec3_max_iterations
        self.clock = clock
        self._states: dict[bytes, ZoneKeys] = {}  # by the lower-cased wire name
        self.failures: dict[EDE, int] = {}  # bogus results by EDE code: security events, for metrics

    def collect(self) -> Iterator[Metric]:
        """Validation failures by EDE code (the resolver it validates for exports them)."""
        failures = CounterMetricFamily(
            "ztdns_dnssec_validation_failures",
            "Answers that failed DNSSEC validation (logged as dnssec_bogus security events), by EDE code",
            labels=["ede"],
        )
        for ede, count in sorted(self.failures.items()):
            failures.add_metric([str(int(ede))], count)
        yield failures

    # ----- chain of trust ---------------------------------------------------------------------------------

    async def state_at(self, name: dns.name.Name, apex: bool = False) -> ZoneKeys:
        """The state of the zone containing ``name``, walking DS records down from an anchor.

        With ``apex`` (``name`` is a signer, so a zone's apex), the DS of ``name`` is asked for first, straight from
        the deepest zone known (as Unbound does): labels between are asked only if that DS is not signed by that
        zone (a zone cut between) or is denied."""
        anchor = self.anchors.closest(name)
        now = self.clock()
        if anchor is None:
            # Under a negative trust anchor the operator chose insecure: nothing to report (no EDE 5).
            reason = (
                None if self.anchors.negated(name) else Reason(EDE.DNSSEC_INDETERMINATE, f"{name}: no trust anchor")
            )
            return ZoneKeys(dns.name.root, Verdict(Security.INSECURE, reason), expires=now + 3600)
        keys = ancestry(name)
        cached = self._states.get(keys[0])
        if cached is not None and cached.expires > now:
            return cached
        # Start from the deepest cached state on the way down, or from the anchor.
        depth, anchor_depth = len(name), len(anchor.zone)
        state: ZoneKeys | None = None
        while depth > anchor_depth:
            depth -= 1
            hit = self._states.get(keys[len(name) - depth])
            if hit is not None and hit.expires > now:
                state = hit
                break
        if state is None:
            state = await self._anchor_state(anchor, now)
            self._remember(keys[len(name) - depth], state)
        if apex and depth < len(name) - 1 and state.verdict.security is Security.SECURE:
            jumped = await self._jump(state, name, now)
            if jumped is not None:
                self._remember(keys[0], jumped)
                return jumped
        while depth < len(name) and state.verdict.security is Security.SECURE:
            depth += 1
            child = dns.name.Name(name.labels[-depth:])
            state = await self._descend(state, child, now)
            self._remember(keys[len(name) - depth], state)
        return state

    def _remember(self, key: bytes, state: ZoneKeys) -> None:
        if len(self._states) >= _MAX_CACHE:
            self._states.clear()
        self._states[key] = state

    async def _anchor_state(self, anchor: Anchor, now: float) -> ZoneKeys:
        zone = anchor.zone
        if anchor.dnskey and not anchor.ds and all(key.algorithm not in self.algorithms for key in anchor.dnskey):
            # As a DS anchor of an unsupported algorithm (RFC 4035 §5.2): the zone is insecure, not bogus.
            algorithms = sorted({int(key.algorithm) for key in anchor.dnskey})
            reason = Reason(
                EDE.UNSUPPORTED_DNSKEY_ALGORITHM, f"{zone}: {zone} DNSKEY: anchor algorithms {algorithms} unsupported"
            )
            return ZoneKeys(zone, Verdict(Security.INSECURE, reason), None, now + 3600)
        response = await self.fetcher.fetch(zone, dns.rdatatype.DNSKEY)
        dnskeys = self._find(response, zone, dns.rdatatype.DNSKEY)
        if dnskeys is None:
            return ZoneKeys(
                zone, _bogus(EDE.DNSKEY_MISSING, f"{zone}: {zone} DNSKEY: missing (trust anchor)"), None, now + 60
            )
        if anchor.ds:
            return self._keys_from_ds(zone, anchor.ds, dnskeys, now)
        anchor_keys = {dnskey_rdata(key) for key in anchor.dnskey}
        trusted = [key for key in dnskeys.rrset if isinstance(key, DNSKEY) and dnskey_rdata(key) in anchor_keys]
        return self._self_signed(zone, dnskeys, trusted, now)

    async def _descend(self, parent: ZoneKeys, child: dns.name.Name, now: float) -> ZoneKeys:
        """One step down: is ``child`` a secure zone, an insecure cut, or just a name in ``parent``?"""
        assert parent.keys is not None
        response = await self.fetcher.fetch(child, dns.rdatatype.DS)
        rcode = rcode_of(response) if response is not None else None
        if response is None or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            verdict = _bogus(EDE.DNSSEC_BOGUS, f"{parent.zone}: no usable answer for {child} DS")
            return ZoneKeys(parent.zone, verdict, None, now + 5)
        ds = self._find(response, child, dns.rdatatype.DS)
        if ds is not None:
            return await self._below_ds(parent, child, ds, now)
        # No DS: the parent must prove it, and the proof says whether child is a zone cut.
        authority = _rrsets_with_sigs(response.authority)
        proof, delegation = self._deny(authority, rcode, parent, child, dns.rdatatype.DS, now)
        expires = now + min(_ttl_of(*response.authority), 3600)
        if proof.bogus:
            return ZoneKeys(parent.zone, proof, None, now + 60)
        if proof.security is Security.INSECURE or delegation:
            return ZoneKeys(child, Verdict(Security.INSECURE, proof.reason), None, expires)
        return ZoneKeys(parent.zone, SECURE, parent.keys, min(parent.expires, expires))

    async def _jump(self, parent: ZoneKeys, child: dns.name.Name, now: float) -> ZoneKeys | None:
        """The state of zone ``child`` from its DS, signed by ``parent`` or by a zone between them (whose own state
        is found the same way first); None when there is no signed DS (walk label by label)."""
        response = await self.fetcher.fetch(child, dns.rdatatype.DS)
        ds = self._find(response, child, dns.rdatatype.DS)
        if ds is None or not ds.sigs:
            return None
        signer = ds.sigs[0].signer
        if signer == parent.zone:
            return await self._below_ds(parent, child, ds, now)
        if not (signer.is_subdomain(parent.zone) and child.is_subdomain(signer) and signer != child):
            return None
        between = await self.state_at(signer, apex=True)
        if between.verdict.security is not Security.SECURE or between.zone != signer:
            return None
        return await self._below_ds(between, child, ds, now)

    async def _below_ds(self, parent: ZoneKeys, child: dns.name.Name, ds: _Signed, now: float) -> ZoneKeys:
        """The state of ``child`` given its DS RRset in ``parent``."""
        assert parent.keys is not None
        verdict = verify(ds, parent.zone, parent.keys, now, self.algorithms)
        if verdict.bogus:
            return ZoneKeys(child, verdict, None, now + 60)
        records = [rdata for rdata in ds.rrset if isinstance(rdata, DS)]
        dnskeys_response = await self.fetcher.fetch(child, dns.rdatatype.DNSKEY)
        dnskeys = self._find(dnskeys_response, child, dns.rdatatype.DNSKEY)
        if dnskeys is None:
            usable = self._usable_ds(child, records)
            if isinstance(usable, Verdict):
                return ZoneKeys(child, usable, None, now + _ttl_of(ds.rrset))
            return ZoneKeys(
                child,
                _bogus(EDE.DNSKEY_MISSING, f"{child}: {child} DNSKEY: missing (DS in {parent.zone})"),
                None,
                now + 60,
            )
        state = self._keys_from_ds(child, records, dnskeys, now)
        state.expires = min(state.expires, now + _ttl_of(ds.rrset))
        return state

    def _usable_ds(self, zone: dns.name.Name, records: list[DS]) -> list[DS] | Verdict:
        usable = [ds for ds in records if ds.algorithm in self.algorithms and ds.digest_type in SUPPORTED_DIGESTS]
        if usable:
            return usable
        if any(ds.algorithm not in self.algorithms for ds in records):
            algorithms = sorted({int(ds.algorithm) for ds in records})
            reason = Reason(EDE.UNSUPPORTED_DNSKEY_ALGORITHM, f"{zone}: {zone} DS: algorithms {algorithms} unsupported")
        else:
            digests = sorted({int(ds.digest_type) for ds in records})
            reason = Reason(EDE.UNSUPPORTED_DS_DIGEST, f"{zone}: {zone} DS: digest types {digests} unsupported")
        return Verdict(Security.INSECURE, reason)

    def _keys_from_ds(self, zone: dns.name.Name, records: list[DS], dnskeys: _Signed, now: float) -> ZoneKeys:
        usable = self._usable_ds(zone, records)
        if isinstance(usable, Verdict):
            return ZoneKeys(zone, usable, None, now + _ttl_of(dnskeys.rrset))
        trusted: list[DNSKEY] = []
        for key in dnskeys.rrset:
            assert isinstance(key, DNSKEY)
            rdata = dnskey_rdata(key)
            tag = key_tag(rdata, key.algorithm)
            for ds in usable:
                matches = ds.algorithm == key.algorithm and ds.key_tag == tag
                if matches and ds_digest(zone, rdata, ds.digest_type) == ds.digest:
                    trusted.append(key)
        return self._self_signed(zone, dnskeys, trusted, now)

    def _self_signed(self, zone: dns.name.Name, dnskeys: _Signed, trusted: list[DNSKEY], now: float) -> ZoneKeys:
        """The DNSKEY RRset must be signed by one of the keys the DS (or anchor) vouches for."""
        if not trusted:
            return ZoneKeys(
                zone, _bogus(EDE.DNSKEY_MISSING, f"{zone}: {zone} DNSKEY: no key matches the DS"), None, now + 60
            )
        verdict = verify(dnskeys, zone, trusted, now, self.algorithms)
        if verdict.bogus:
            assert verdict.reason is not None
            return ZoneKeys(zone, verdict, None, now + 60)
        keys = tuple(key for key in dnskeys.rrset if isinstance(key, DNSKEY))
        return ZoneKeys(zone, SECURE, keys, now + _ttl_of(dnskeys.rrset))

    @staticmethod
    def _find(response: dns.message.Message | None, name: dns.name.Name, rdtype: int) -> _Signed | None:
        if response is None:
            return None
        return _rrsets_with_sigs(response.answer).get((wire_key(name), rdtype))

    # ----- denial ----------------------------------------------------------------------------------------

    def _deny(
        self,
        authority: _Section,
        rcode: int,
        state: ZoneKeys,
        name: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
        now: float,
    ) -> tuple[Verdict, bool]:
        """Check the NSEC/NSEC3 proof in a response's ``authority`` that ``name``/``qtype`` does not exist.

        Also says whether the proof shows a delegation (for DS denials: an insecure zone cut).
        """
        assert state.keys is not None
        proofs: list[dns.rrset.RRset] = []
        for signed in authority.values():
            if signed.rrset.rdtype not in (*_DENIAL_TYPES, dns.rdatatype.SOA):
                continue
            verdict = verify(signed, state.zone, state.keys, now, self.algorithms)
            if verdict.bogus:
                return verdict, False
            if signed.rrset.rdtype in _DENIAL_TYPES:
                proofs.append(signed.rrset)
        nsecs = [r for r in proofs if r.rdtype == dns.rdatatype.NSEC]
        nsec3s = denial.Nsec3Set.of(state.zone, [r for r in proofs if r.rdtype == dns.rdatatype.NSEC3])
        is_nx = rcode == dns.rcode.NXDOMAIN
        if nsecs:
            result = denial.nsec_nxdomain(nsecs, name) if is_nx else denial.nsec_nodata(nsecs, name, qtype)
        elif nsec3s is not None:
            if nsec3s.iterations > self.nsec3_max_iterations:
                reason = Reason(EDE.OTHER, f"{state.zone}: NSEC3 iterations {nsec3s.iterations} above limit")
                return Verdict(Security.INSECURE, reason), True
            result = denial.nsec3_nxdomain(nsec3s, name) if is_nx else denial.nsec3_nodata(nsec3s, name, qtype)
        else:
            result = denial.Denial(denial.Proof.MISSING, why="no NSEC/NSEC3 in a signed zone")
        if result.proof is denial.Proof.MISSING:
            what = f"{name} {'NXDOMAIN' if is_nx else dns.rdatatype.to_text(qtype)}"
            return _bogus(EDE.NSEC_MISSING, f"{state.zone}: {what}: {result.why}"), False
        if result.proof is denial.Proof.INSECURE:
            return INSECURE, result.delegation
        return SECURE, result.delegation

    # ----- responses -------------------------------------------------------------------------------------

    async def validate(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> Verdict:
        """Validate a response (fetched with DO=1) to ``qname``/``qtype``; a bogus one is counted here and logged
        as a security event by the observer (``ztdns.observe.stage``), the one exit of query names."""
        verdict = await self.check(qname, qtype, response)
        if verdict.bogus:
            assert verdict.reason is not None
            ede = verdict.reason.ede
            self.failures[ede] = self.failures.get(ede, 0) + 1
        return verdict

    async def check(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> Verdict:
        """The verdict on a response, without logging or counting (also for answers we built ourselves)."""
        rcode = rcode_of(response)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return INSECURE  # SERVFAIL, REFUSED...: nothing to vouch for
        now = self.clock()
        verdicts: list[Verdict] = []
        answer = _rrsets_with_sigs(response.answer)
        authority = _rrsets_with_sigs(response.authority)
        sname = qname
        for _ in range(len(answer) + 1):
            found = self._answer_for(answer, sname, qtype)
            if found is None:
                break
            signed, target = found
            verdict = await self._check_rrset(signed, authority, now)
            verdicts.append(verdict)
            if verdict.bogus or target is None:
                return combine(verdicts)
            sname = target
        else:
            return _bogus(EDE.DNSSEC_BOGUS, f"{qname}: CNAME loop")
        # The chain ended without data for sname: the response must deny it.
        state = await self._denying_zone(authority, sname)
        if state.verdict.security is not Security.SECURE:
            verdicts.append(state.verdict)
            return combine(verdicts)
        verdicts.append(self._deny(authority, rcode, state, sname, qtype, now)[0])
        return combine(verdicts)

    @staticmethod
    def _answer_for(
        answer: _Section, sname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> tuple[_Signed, dns.name.Name | None] | None:
        """The RRset answering ``sname`` and the name the chain continues at (None: the chain ends here)."""
        owner = wire_key(sname)
        found = answer.get((owner, qtype))
        if found is not None:
            return found, None
        # A DNAME first: the CNAME synthesised from it is unsigned (RFC 6672 §5.3.3).
        for signed in answer.values():
            rrset = signed.rrset
            if rrset.rdtype == dns.rdatatype.DNAME and sname.is_subdomain(rrset.name) and sname != rrset.name:
                dname = rrset[0]
                assert isinstance(dname, DNAME)
                try:
                    return signed, sname.relativize(rrset.name).concatenate(dname.target)
                except dns.name.NameTooLong:
                    return None
        found = answer.get((owner, dns.rdatatype.CNAME))
        if found is not None:
            cname = found.rrset[0]
            assert isinstance(cname, CNAME)
            return found, cname.target
        return None

    async def _check_rrset(self, signed: _Signed, authority: _Section, now: float) -> Verdict:
        rrset = signed.rrset
        signer = next((s.signer for s in signed.sigs if rrset.name.is_subdomain(s.signer)), None)
        state = await self.state_at(signer if signer is not None else rrset.name, apex=signer is not None)
        if state.verdict.security is not Security.SECURE:
            return state.verdict
        if signer is None or state.zone != signer:
            return _bogus(EDE.RRSIGS_MISSING, f"{state.zone}: {_describe(rrset)}: no RRSIG")
        assert state.keys is not None
        verdict = verify(signed, state.zone, state.keys, now, self.algorithms)
        if verdict.bogus:
            return verdict
        labels = min(s.labels for s in signed.sigs if s.signer == signer)
        owner_labels = len(rrset.name) - 1 - (1 if rrset.name.labels[0] == b"*" else 0)
        if labels < owner_labels:
            # Expanded from a wildcard: the authority section must prove sname itself does not exist.
            source = dns.name.Name(rrset.name.labels[-(labels + 1) :])
            return self._wildcard_proof(authority, state, rrset.name, source, now)
        return verdict

    def _wildcard_proof(
        self,
        authority: _Section,
        state: ZoneKeys,
        name: dns.name.Name,
        source: dns.name.Name,
        now: float,
    ) -> Verdict:
        assert state.keys is not None
        proofs: list[dns.rrset.RRset] = []
        for signed in authority.values():
            if signed.rrset.rdtype in _DENIAL_TYPES:
                verdict = verify(signed, state.zone, state.keys, now, self.algorithms)
                if verdict.bogus:
                    return verdict
                proofs.append(signed.rrset)
        nsecs = [r for r in proofs if r.rdtype == dns.rdatatype.NSEC]
        nsec3s = denial.Nsec3Set.of(state.zone, [r for r in proofs if r.rdtype == dns.rdatatype.NSEC3])
        if nsecs:
            result = denial.nsec_wildcard_expansion(nsecs, name)
        elif nsec3s is not None:
            if nsec3s.iterations > self.nsec3_max_iterations:
                return INSECURE
            result = denial.nsec3_wildcard_expansion(nsec3s, name, source)
        else:
            return _bogus(EDE.NSEC_MISSING, f"{state.zone}: {name}: wildcard answer without NSEC/NSEC3")
        if result.proof is denial.Proof.MISSING:
            return _bogus(EDE.NSEC_MISSING, f"{state.zone}: {result.why}")
        return SECURE if result.proof is denial.Proof.PROVEN else INSECURE

    async def _denying_zone(self, authority: _Section, sname: dns.name.Name) -> ZoneKeys:
        """The state of the zone whose SOA/NSEC records deny ``sname``."""
        for signed in authority.values():
            if signed.rrset.rdtype in (dns.rdatatype.SOA, *_DENIAL_TYPES) and signed.sigs:
                signer = signed.sigs[0].signer
                if sname.is_subdomain(signer):
                    state = await self.state_at(signer, apex=True)
                    if state.verdict.security is Security.SECURE and state.zone != signer:
                        return ZoneKeys(state.zone, _bogus(EDE.DNSSEC_BOGUS, f"{signer}: denial signed by a non-zone"))
                    return state
        state = await self.state_at(sname)
        if state.verdict.security is Security.SECURE:
            return ZoneKeys(state.zone, _bogus(EDE.NSEC_MISSING, f"{state.zone}: {sname}: unsigned denial"))
        return state
