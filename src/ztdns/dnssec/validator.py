"""DNSSEC validation (RFC 4033-4035, 5155, 6840): builds the chain of trust and checks a response against it.

The validator never opens a socket: it asks a :class:`Fetcher` for the DS and DNSKEY records it needs
(recursion, or the forwarder with DO=1 CD=1) and keeps the zone keys it proved in a small cache.
Cryptography is dnspython's; the decisions — which signatures count, which algorithms are supported
(RFC 8624), which denial proves what — are here and in :mod:`ztdns.dnssec.denial`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import dns.dnssec
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
from dns.rdtypes.dnskeybase import Flag

from ztdns.dnssec import denial
from ztdns.dnssec.signed import signed_data
from ztdns.dnssec.trust import Anchor, TrustAnchors
from ztdns.outcome import EDE, Reason

log = logging.getLogger("ztdns.dnssec")

# RFC 8624 §3.1 "MUST/RECOMMENDED validate": RSASHA256, RSASHA512, ECDSA P-256/P-384, Ed25519, Ed448.
# RSAMD5, DSA, RSASHA1 (and its NSEC3 alias), GOST and unknown numbers count as unsupported: zones signed
# only with them are treated as unsigned (insecure, EDE 1).
SUPPORTED_ALGORITHMS = frozenset({8, 10, 13, 14, 15, 16})
# RFC 8624 §3.3: SHA-1 must still be validated; GOST and unknown digests are unsupported (EDE 2).
SUPPORTED_DIGESTS = frozenset({1, 2, 4})
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
    keys: dns.rdataset.Rdataset | None = None
    expires: float = 0.0


@dataclass
class _Signed:
    rrset: dns.rrset.RRset
    sigs: list[RRSIG] = field(default_factory=list)


def _rrsets_with_sigs(section: Sequence[dns.rrset.RRset]) -> list[_Signed]:
    """Pair each RRset with the RRSIGs covering it (dnspython keeps them as separate RRsets)."""
    signed: dict[tuple[dns.name.Name, int], _Signed] = {}
    sigs: list[dns.rrset.RRset] = []
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.RRSIG:
            sigs.append(rrset)
        else:
            signed.setdefault((rrset.name, rrset.rdtype), _Signed(rrset))
    for rrset in sigs:
        for rrsig in rrset:
            assert isinstance(rrsig, RRSIG)
            entry = signed.get((rrset.name, rrsig.type_covered))
            if entry is not None:
                entry.sigs.append(rrsig)
    return list(signed.values())


def _describe(rrset: dns.rrset.RRset) -> str:
    return f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"


def verify(signed: _Signed, zone: dns.name.Name, keys: dns.rdataset.Rdataset, now: float) -> Verdict:
    """Check that at least one RRSIG by a supported key of ``zone`` verifies ``signed.rrset`` at ``now``."""
    usable = [s for s in signed.sigs if s.signer == zone and s.algorithm in SUPPORTED_ALGORITHMS]
    if not usable:
        what = _describe(signed.rrset)
        if signed.sigs and all(s.algorithm not in SUPPORTED_ALGORITHMS for s in signed.sigs):
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


class _KeyCache:
    """What verifying with a DNSKEY needs and dnspython recomputes on every signature: the key tag and the
    parsed public key; and which signatures already verified (an SOA or NSEC record comes back in answer
    after answer, and answers synthesised from cached denials are checked again)."""

    def __init__(self, limit: int = _MAX_CACHE) -> None:
        self.limit = limit
        self.tags: dict[DNSKEY, int] = {}
        self.public: dict[DNSKEY, GenericPublicKey | None] = {}
        self.verified: dict[tuple[bytes, bytes], DNSKEY] = {}  # (signature, signed data) -> the key

    def tag(self, key: DNSKEY) -> int:
        tag = self.tags.get(key)
        if tag is None:
            self._bound(self.tags)
            tag = self.tags[key] = dns.dnssec.key_id(key)
        return tag

    def public_key(self, key: DNSKEY) -> GenericPublicKey | None:
        """The key ready to verify with, or None when its bytes are not a valid key of its algorithm."""
        if key in self.public:
            return self.public[key]
        self._bound(self.public)
        try:
            public: GenericPublicKey | None = get_algorithm_cls_from_dnskey(key).public_cls.from_dnskey(key)
        except (dns.exception.DNSException, ValueError):
            public = None
        self.public[key] = public
        return public

    def _bound(self, table: dict[_K, _V]) -> None:
        if len(table) >= self.limit:
            table.clear()


_K = TypeVar("_K")
_V = TypeVar("_V")
_keys = _KeyCache()


def _signature_verifies(rrset: dns.rrset.RRset, rrsig: RRSIG, keys: dns.rdataset.Rdataset) -> bool:
    """RFC 4035 §5.3: does ``rrsig`` (time already checked) verify ``rrset`` with one of ``keys``?

    dnspython's ``validate_rrsig`` without its per-call key parsing and key-tag computing, and with the signed
    data built by :func:`ztdns.dnssec.signed.signed_data`: the candidate keys, the bytes and the cryptography
    are the same."""
    if rrsig.type_covered != rrset.rdtype or rrsig.rdclass != rrset.rdclass:
        return False
    candidates = [
        key
        for key in keys
        if isinstance(key, DNSKEY)
        and key.algorithm == rrsig.algorithm
        and key.flags & Flag.ZONE
        and key.protocol == 3
        # A revoked key may only sign the DNSKEY RRset (RFC 5011 §2.1).
        and (not key.flags & Flag.REVOKE or rrsig.type_covered == dns.rdatatype.DNSKEY)
        and _keys.tag(key) == rrsig.key_tag
    ]
    if not candidates:
        return False
    try:
        data = signed_data(rrset, rrsig)
    except (dns.exception.DNSException, ValueError):
        return False
    memo = (rrsig.signature, data)
    if _keys.verified.get(memo) in candidates:
        return True
    for key in candidates:
        public = _keys.public_key(key)
        if public is None:
            continue
        try:
            public.verify(rrsig.signature, data)
        except (InvalidSignature, dns.exception.DNSException, ValueError):
            continue
        if len(_keys.verified) >= _keys.limit:
            _keys.verified.clear()
        _keys.verified[memo] = key
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
    ) -> None:
        self.fetcher = fetcher
        self.anchors = anchors
        self.nsec3_max_iterations = nsec3_max_iterations
        self.clock = clock
        self._states: dict[dns.name.Name, ZoneKeys] = {}
        self.failures: dict[EDE, int] = {}  # bogus results by EDE code: security events, for metrics

    # ----- chain of trust ---------------------------------------------------------------------------------

    async def state_at(self, name: dns.name.Name) -> ZoneKeys:
        """The state of the zone containing ``name``, walking DS records down from an anchor."""
        anchor = self.anchors.closest(name)
        now = self.clock()
        if anchor is None:
            reason = Reason(EDE.DNSSEC_INDETERMINATE, f"{name}: no trust anchor")
            return ZoneKeys(dns.name.root, Verdict(Security.INSECURE, reason), expires=now + 3600)
        cached = self._states.get(name)
        if cached is not None and cached.expires > now:
            return cached
        # Start from the deepest cached state on the way down, or from the anchor.
        start = name
        state: ZoneKeys | None = None
        while start != anchor.zone:
            start = start.parent()
            hit = self._states.get(start)
            if hit is not None and hit.expires > now:
                state = hit
                break
        if state is None:
            start = anchor.zone
            state = await self._anchor_state(anchor, now)
            self._remember(start, state)
        depth = len(start)
        while depth < len(name) and state.verdict.security is Security.SECURE:
            depth += 1
            child = dns.name.Name(name.labels[-depth:])
            state = await self._descend(state, child, now)
            self._remember(child, state)
        return state

    def _remember(self, name: dns.name.Name, state: ZoneKeys) -> None:
        if len(self._states) >= _MAX_CACHE:
            self._states.clear()
        self._states[name] = state

    async def _anchor_state(self, anchor: Anchor, now: float) -> ZoneKeys:
        zone = anchor.zone
        response = await self.fetcher.fetch(zone, dns.rdatatype.DNSKEY)
        dnskeys = self._find(response, zone, dns.rdatatype.DNSKEY)
        if dnskeys is None:
            return ZoneKeys(
                zone, _bogus(EDE.DNSKEY_MISSING, f"{zone}: {zone} DNSKEY: missing (trust anchor)"), None, now + 60
            )
        if anchor.ds:
            return self._keys_from_ds(zone, anchor.ds, dnskeys, now)
        trusted = [key for key in dnskeys.rrset if key in anchor.dnskey]
        return self._self_signed(zone, dnskeys, trusted, now)

    async def _descend(self, parent: ZoneKeys, child: dns.name.Name, now: float) -> ZoneKeys:
        """One step down: is ``child`` a secure zone, an insecure cut, or just a name in ``parent``?"""
        assert parent.keys is not None
        response = await self.fetcher.fetch(child, dns.rdatatype.DS)
        if response is None or response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            verdict = _bogus(EDE.DNSSEC_BOGUS, f"{parent.zone}: no usable answer for {child} DS")
            return ZoneKeys(parent.zone, verdict, None, now + 5)
        ds = self._find(response, child, dns.rdatatype.DS)
        if ds is not None:
            verdict = verify(ds, parent.zone, parent.keys, now)
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
        # No DS: the parent must prove it, and the proof says whether child is a zone cut.
        proof, delegation = self._deny(response, parent, child, dns.rdatatype.DS, now)
        expires = now + min(_ttl_of(*response.authority), 3600)
        if proof.bogus:
            return ZoneKeys(parent.zone, proof, None, now + 60)
        if proof.security is Security.INSECURE or delegation:
            return ZoneKeys(child, Verdict(Security.INSECURE, proof.reason), None, expires)
        return ZoneKeys(parent.zone, SECURE, parent.keys, min(parent.expires, expires))

    def _usable_ds(self, zone: dns.name.Name, records: list[DS]) -> list[DS] | Verdict:
        usable = [ds for ds in records if ds.algorithm in SUPPORTED_ALGORITHMS and ds.digest_type in SUPPORTED_DIGESTS]
        if usable:
            return usable
        if any(ds.algorithm not in SUPPORTED_ALGORITHMS for ds in records):
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
            for ds in usable:
                if ds.algorithm != key.algorithm or ds.key_tag != dns.dnssec.key_id(key):
                    continue
                try:
                    if dns.dnssec.make_ds(zone, key, ds.digest_type, policy=dns.dnssec.allow_all_policy) == ds:
                        trusted.append(key)
                except (dns.exception.DNSException, ValueError):
                    continue
        return self._self_signed(zone, dnskeys, trusted, now)

    def _self_signed(self, zone: dns.name.Name, dnskeys: _Signed, trusted: list[DNSKEY], now: float) -> ZoneKeys:
        """The DNSKEY RRset must be signed by one of the keys the DS (or anchor) vouches for."""
        if not trusted:
            return ZoneKeys(
                zone, _bogus(EDE.DNSKEY_MISSING, f"{zone}: {zone} DNSKEY: no key matches the DS"), None, now + 60
            )
        anchor_keys = dns.rdataset.from_rdata_list(dnskeys.rrset.ttl, trusted)
        verdict = verify(dnskeys, zone, anchor_keys, now)
        if verdict.bogus:
            assert verdict.reason is not None
            return ZoneKeys(zone, verdict, None, now + 60)
        keys = dns.rdataset.from_rdata_list(dnskeys.rrset.ttl, list(dnskeys.rrset))
        return ZoneKeys(zone, SECURE, keys, now + _ttl_of(dnskeys.rrset))

    @staticmethod
    def _find(response: dns.message.Message | None, name: dns.name.Name, rdtype: int) -> _Signed | None:
        if response is None:
            return None
        for signed in _rrsets_with_sigs(response.answer):
            if signed.rrset.name == name and signed.rrset.rdtype == rdtype:
                return signed
        return None

    # ----- denial ----------------------------------------------------------------------------------------

    def _deny(
        self,
        response: dns.message.Message,
        state: ZoneKeys,
        name: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
        now: float,
    ) -> tuple[Verdict, bool]:
        """Check the NSEC/NSEC3 proof in ``response`` that ``name``/``qtype`` does not exist.

        Also says whether the proof shows a delegation (for DS denials: an insecure zone cut).
        """
        assert state.keys is not None
        proofs: list[dns.rrset.RRset] = []
        for signed in _rrsets_with_sigs(response.authority):
            if signed.rrset.rdtype not in (*_DENIAL_TYPES, dns.rdatatype.SOA):
                continue
            verdict = verify(signed, state.zone, state.keys, now)
            if verdict.bogus:
                return verdict, False
            if signed.rrset.rdtype in _DENIAL_TYPES:
                proofs.append(signed.rrset)
        nsecs = [r for r in proofs if r.rdtype == dns.rdatatype.NSEC]
        nsec3s = denial.Nsec3Set.of(state.zone, [r for r in proofs if r.rdtype == dns.rdatatype.NSEC3])
        is_nx = response.rcode() == dns.rcode.NXDOMAIN
        what = f"{name} {'NXDOMAIN' if is_nx else dns.rdatatype.to_text(qtype)}"
        if nsecs:
            result = denial.nsec_nxdomain(nsecs, name) if is_nx else denial.nsec_nodata(nsecs, name, qtype)
        elif nsec3s is not None:
            if nsec3s.iterations > self.nsec3_max_iterations:
                reason = Reason(EDE.OTHER, f"{state.zone}: NSEC3 iterations {nsec3s.iterations} above limit")
                return Verdict(Security.INSECURE, reason), True
            result = denial.nsec3_nxdomain(nsec3s, name) if is_nx else denial.nsec3_nodata(nsec3s, name, qtype)
        else:
            return _bogus(EDE.NSEC_MISSING, f"{state.zone}: {what}: no NSEC/NSEC3 in a signed zone"), False
        if result.proof is denial.Proof.MISSING:
            return _bogus(EDE.NSEC_MISSING, f"{state.zone}: {what}: {result.why}"), False
        if result.proof is denial.Proof.INSECURE:
            return INSECURE, result.delegation
        return SECURE, result.delegation

    # ----- responses -------------------------------------------------------------------------------------

    async def validate(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> Verdict:
        """Validate a response (fetched with DO=1) to ``qname``/``qtype``; a bogus one is a security event."""
        verdict = await self.check(qname, qtype, response)
        if verdict.bogus:
            assert verdict.reason is not None
            ede = verdict.reason.ede
            self.failures[ede] = self.failures.get(ede, 0) + 1
            qtype_text = dns.rdatatype.to_text(qtype)
            log.warning(
                "event=dnssec_bogus qname=%s qtype=%s ede=%d text=%r",
                qname,
                qtype_text,
                ede,
                verdict.reason.text,
                extra={
                    "event": "dnssec_bogus",
                    "qname": str(qname),
                    "qtype": qtype_text,
                    "ede": int(ede),
                    "text": verdict.reason.text,
                },
            )
        return verdict

    async def check(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> Verdict:
        """The verdict on a response, without logging or counting (also for answers we built ourselves)."""
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return INSECURE  # SERVFAIL, REFUSED...: nothing to vouch for
        now = self.clock()
        verdicts: list[Verdict] = []
        answer = _rrsets_with_sigs(response.answer)
        sname = qname
        for _ in range(len(answer) + 1):
            found = self._answer_for(answer, sname, qtype)
            if found is None:
                break
            signed, target = found
            verdict = await self._check_rrset(signed, sname, response, now)
            verdicts.append(verdict)
            if verdict.bogus or target is None:
                return combine(verdicts)
            sname = target
        else:
            return _bogus(EDE.DNSSEC_BOGUS, f"{qname}: CNAME loop")
        # The chain ended without data for sname: the response must deny it.
        state = await self._denying_zone(response, sname)
        if state.verdict.security is not Security.SECURE:
            verdicts.append(state.verdict)
            return combine(verdicts)
        verdicts.append(self._deny(response, state, sname, qtype, now)[0])
        return combine(verdicts)

    @staticmethod
    def _answer_for(
        answer: list[_Signed], sname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> tuple[_Signed, dns.name.Name | None] | None:
        """The RRset answering ``sname`` and the name the chain continues at (None: the chain ends here)."""
        for signed in answer:
            rrset = signed.rrset
            if rrset.name == sname and rrset.rdtype == qtype:
                return signed, None
        # A DNAME first: the CNAME synthesised from it is unsigned (RFC 6672 §5.3.3).
        for signed in answer:
            rrset = signed.rrset
            if rrset.rdtype == dns.rdatatype.DNAME and sname.is_subdomain(rrset.name) and sname != rrset.name:
                dname = rrset[0]
                assert isinstance(dname, DNAME)
                try:
                    return signed, sname.relativize(rrset.name).concatenate(dname.target)
                except dns.name.NameTooLong:
                    return None
        for signed in answer:
            rrset = signed.rrset
            if rrset.name == sname and rrset.rdtype == dns.rdatatype.CNAME:
                cname = rrset[0]
                assert isinstance(cname, CNAME)
                return signed, cname.target
        return None

    async def _check_rrset(
        self, signed: _Signed, sname: dns.name.Name, response: dns.message.Message, now: float
    ) -> Verdict:
        rrset = signed.rrset
        signer = next((s.signer for s in signed.sigs if rrset.name.is_subdomain(s.signer)), None)
        state = await self.state_at(signer if signer is not None else rrset.name)
        if state.verdict.security is not Security.SECURE:
            return state.verdict
        if signer is None or state.zone != signer:
            return _bogus(EDE.RRSIGS_MISSING, f"{state.zone}: {_describe(rrset)}: no RRSIG")
        assert state.keys is not None
        verdict = verify(signed, state.zone, state.keys, now)
        if verdict.bogus:
            return verdict
        labels = min(s.labels for s in signed.sigs if s.signer == signer)
        owner_labels = len(rrset.name) - 1 - (1 if rrset.name.labels[0] == b"*" else 0)
        if labels < owner_labels:
            # Expanded from a wildcard: the authority section must prove sname itself does not exist.
            source = dns.name.Name(rrset.name.labels[-(labels + 1) :])
            return self._wildcard_proof(response, state, rrset.name, source, now)
        return verdict

    def _wildcard_proof(
        self,
        response: dns.message.Message,
        state: ZoneKeys,
        name: dns.name.Name,
        source: dns.name.Name,
        now: float,
    ) -> Verdict:
        assert state.keys is not None
        proofs: list[dns.rrset.RRset] = []
        for signed in _rrsets_with_sigs(response.authority):
            if signed.rrset.rdtype in _DENIAL_TYPES:
                verdict = verify(signed, state.zone, state.keys, now)
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

    async def _denying_zone(self, response: dns.message.Message, sname: dns.name.Name) -> ZoneKeys:
        """The state of the zone whose SOA/NSEC records deny ``sname``."""
        for signed in _rrsets_with_sigs(response.authority):
            if signed.rrset.rdtype in (dns.rdatatype.SOA, *_DENIAL_TYPES) and signed.sigs:
                signer = signed.sigs[0].signer
                if sname.is_subdomain(signer):
                    state = await self.state_at(signer)
                    if state.verdict.security is Security.SECURE and state.zone != signer:
                        return ZoneKeys(state.zone, _bogus(EDE.DNSSEC_BOGUS, f"{signer}: denial signed by a non-zone"))
                    return state
        state = await self.state_at(sname)
        if state.verdict.security is Security.SECURE:
            return ZoneKeys(state.zone, _bogus(EDE.NSEC_MISSING, f"{state.zone}: {sname}: unsigned denial"))
        return state
