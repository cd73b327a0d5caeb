"""Online RRSIG generation with a signature cache, built as bytes (RFC 4034 §3.1.8.1), not by dnspython.

The signed data of an RRset is ``RRSIG RDATA without signature | RR(1) | RR(2) ...`` with RRs in canonical form
and order, and the RRSIG RDATA we serve is that same head followed by the signature. Both are plain bytes built
from precomputed pieces: per key the key tag and signer name, per RRset the canonical owner|type|class|TTL prefix
and the sorted canonical rdata (dnspython only turns each record's rdata into wire). Profiling showed building
dnspython RRSIG objects cost more than the ECDSA signature itself, so the object is made only when an answer
needs it, once per cached signature.

Signatures are cached per (owner, type, key) together with the exact RRset content they cover: a lookup whose
content differs (changed data, TTL) misses and re-signs, so a changed RRset can never be served with the
signature of its old content. Entries are refreshed ``refresh`` seconds before they expire.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.rrset

from ztdns.authority.keys import ZoneKey

Clock = Callable[[], float]

# Signed by the key-signing keys: the DNSKEY RRset and the records that tell the parent about it.
KSK_SIGNED_TYPES = frozenset({dns.rdatatype.DNSKEY, dns.rdatatype.CDS, dns.rdatatype.CDNSKEY})
RRSIG = dns.rdatatype.RRSIG
# Validity starts an hour back so clients with a slow clock accept fresh signatures.
INCEPTION_OFFSET = 3600
# RRSIG RDATA up to the key tag: type covered, algorithm, labels, original TTL, expiration, inception.
_RRSIG_HEAD = struct.Struct("!HBBIII")
_RR_HEAD = struct.Struct("!HHI")
_RDLEN = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Validity:
    """Signature lifetime: ``lifetime`` plus up to ``jitter`` seconds; re-signed ``refresh`` seconds early."""

    lifetime: int = 14 * 86400
    jitter: int = 86400
    refresh: int = 5 * 86400

    def __post_init__(self) -> None:
        if not 0 < self.refresh < self.lifetime:
            raise ValueError("signature refresh must be positive and shorter than the signature lifetime")


@dataclass(slots=True)
class _Cached:
    content: bytes  # the canonical RRset the signature covers
    wire: bytes  # the RRSIG RDATA
    refresh_at: float
    rdata: dns.rdtypes.ANY.RRSIG.RRSIG | None = None  # made from ``wire`` when an answer first needs it

    def rrsig(self) -> dns.rdtypes.ANY.RRSIG.RRSIG:
        if self.rdata is None:
            rdata = dns.rdata.from_wire(dns.rdataclass.IN, RRSIG, self.wire, 0, len(self.wire))
            assert isinstance(rdata, dns.rdtypes.ANY.RRSIG.RRSIG)
            self.rdata = rdata
        return self.rdata


@dataclass(frozen=True, slots=True)
class _SignedSet:
    source: dns.rrset.RRset  # the object signed (kept alive, so an identity match is the same content)
    content: bytes
    keys: Sequence[ZoneKey]  # the key tuple it was made with (identity: set_keys makes a new one)
    refresh_at: float
    rrsigs: dns.rrset.RRset


def _bound(cache: dict[Any, Any], limit: int) -> None:
    """Make room for one entry by forgetting the oldest."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]


def canonical_owner(name: dns.name.Name) -> bytes:
    """The owner name in canonical wire form (RFC 4034 §6.2: uncompressed, ASCII lower case)."""
    return b"".join(len(label).to_bytes(1, "big") + label.lower() for label in name.labels)


def canonical_rrset(rrset: dns.rrset.RRset, origin: dns.name.Name | None = None) -> bytes:
    """RR(1) | RR(2) ... of RFC 4034 §3.1.8.1: canonical owner, class, TTL, sorted unique canonical rdata."""
    return _canonical(canonical_owner(rrset.name), rrset, origin)


def _canonical(owner: bytes, rrset: dns.rrset.RRset, origin: dns.name.Name | None = None) -> bytes:
    prefix = owner + _RR_HEAD.pack(rrset.rdtype, rrset.rdclass, rrset.ttl)
    rdatas: list[bytes] = sorted({rd.to_digestable(origin) for rd in rrset})
    if len(rdatas) == 1:
        rdata = rdatas[0]
        return prefix + _RDLEN.pack(len(rdata)) + rdata
    return b"".join(prefix + _RDLEN.pack(len(rd)) + rd for rd in rdatas)


def rrsig_labels(name: dns.name.Name) -> int:
    """Label count for RRSIG: the root and a leading wildcard label do not count (RFC 4034 §3.1.3)."""
    labels = len(name) - 1
    return labels - 1 if name.is_wild() else labels


class ZoneSigner:
    """Signs RRsets of one zone with its current keys; implements the answer code's ``Signatures``."""

    def __init__(
        self,
        origin: dns.name.Name,
        validity: Validity = Validity(),
        clock: Clock = time.time,
        max_entries: int = 200_000,
    ) -> None:
        self.origin = origin
        self.validity = validity
        self.clock = clock
        self.max_entries = max_entries
        # Key tag | signer name: the fixed end of every RRSIG RDATA head this zone makes with one key.
        self._signer_wire = canonical_owner(origin)
        self._key_tails: dict[int, bytes] = {}
        self._zsks: Sequence[ZoneKey] = ()
        self._ksks: Sequence[ZoneKey] = ()
        # Offline KSK: the imported RRSIGs of the key record types (by type covered), served instead of signing.
        self._presigned: dict[int, dns.rrset.RRset] | None = None
        # Per (canonical owner, type, key tag): one signature. Per (canonical owner, type): the RRSIG RRset last
        # handed out, with the content and key set it covers, so a repeated answer builds no dnspython objects.
        self._cache: dict[tuple[bytes, int, int], _Cached] = {}
        self._sets: dict[tuple[bytes, int], _SignedSet] = {}
        self.signatures_made = 0
        # The earliest refresh time of any signature handed out: from then on a secondary holding the zone
        # needs a new version (serial) to fetch fresh signatures before the old ones expire.
        self.earliest_refresh = float("inf")

    def resign(self, cutoff: float) -> None:
        """Forget signatures due for refresh before ``cutoff``: the next use signs anew (a new zone version
        for secondaries). Signatures due shortly are renewed with the due ones, so versions stay rare."""
        self._cache = {key: entry for key, entry in self._cache.items() if entry.refresh_at >= cutoff}
        self._sets = {}
        self.earliest_refresh = min((entry.refresh_at for entry in self._cache.values()), default=float("inf"))

    def set_keys(self, zsks: Sequence[ZoneKey], ksks: Sequence[ZoneKey]) -> None:
        """Switch to a new key set; cached signatures of keys no longer used are dropped."""
        self._zsks, self._ksks = tuple(zsks), tuple(ksks)
        tags = {k.tag for k in (*self._zsks, *self._ksks)}
        self._cache = {key: entry for key, entry in self._cache.items() if key[2] in tags}
        self._sets = {}

    def set_presigned(self, signatures: dict[int, dns.rrset.RRset] | None) -> None:
        """Serve these RRSIGs for DNSKEY, CDS and CDNSKEY (an offline KSK's, covering exactly the RRsets served);
        None: sign them with the KSKs."""
        self._presigned = signatures

    def keys_for(self, rdtype: int) -> Sequence[ZoneKey]:
        return self._ksks if rdtype in KSK_SIGNED_TYPES else self._zsks

    def rrsig(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset | None:
        """The RRSIG RRset covering ``rrset`` (shared with later callers: do not modify it)."""
        keys = self.keys_for(rrset.rdtype)
        if self._presigned is not None and rrset.rdtype in KSK_SIGNED_TYPES:
            if rrset.name == self.origin:
                return self._presigned.get(rrset.rdtype)
            keys = self._zsks  # such a type below the apex (no KSK here to sign it)
        if not keys or rrset.rdtype == RRSIG:
            return None
        owner = canonical_owner(rrset.name)
        now = self.clock()
        set_key = (owner, rrset.rdtype)
        made = self._sets.get(set_key)
        fresh = made is not None and made.keys is keys and now < made.refresh_at
        if fresh and made is not None and made.source is rrset:
            # The very RRset object signed before (NSEC3 chain, negative SOA: zone versions never modify theirs).
            return made.rrsigs
        content = _canonical(owner, rrset)
        if fresh and made is not None and made.content == content:
            return made.rrsigs
        sigs = dns.rrset.RRset(rrset.name, rrset.rdclass, RRSIG, rrset.rdtype)
        refresh_at = float("inf")
        for key in keys:
            cache_key = (owner, rrset.rdtype, key.tag)
            cached = self._cache.get(cache_key)
            if cached is None or cached.content != content or now >= cached.refresh_at:
                cached = self._sign(rrset, content, key, now)
                self._cache.pop(cache_key, None)
                _bound(self._cache, self.max_entries)
                self._cache[cache_key] = cached
            sigs.add(cached.rrsig(), rrset.ttl)
            refresh_at = min(refresh_at, cached.refresh_at)
        _bound(self._sets, self.max_entries)
        self._sets[set_key] = _SignedSet(rrset, content, keys, refresh_at, sigs)
        return sigs

    def sign_fresh(self, rrset: dns.rrset.RRset, key: ZoneKey) -> bytes:
        """The RRSIG RDATA of one new signature, bypassing the cache (benchmarks, tests)."""
        return self._sign(rrset, canonical_rrset(rrset), key, self.clock()).wire

    def _sign(self, rrset: dns.rrset.RRset, content: bytes, key: ZoneKey, now: float) -> _Cached:
        validity = self.validity
        inception = int(now) - INCEPTION_OFFSET
        expiration = int(now) + validity.lifetime + random.randint(0, validity.jitter)
        tail = self._key_tails.get(key.tag)
        if tail is None:
            tail = self._key_tails[key.tag] = key.tag.to_bytes(2, "big") + self._signer_wire
        head = (
            _RRSIG_HEAD.pack(
                rrset.rdtype,
                key.private.algorithm,
                rrsig_labels(rrset.name),
                rrset.ttl,
                expiration & 0xFFFFFFFF,
                inception & 0xFFFFFFFF,
            )
            + tail
        )
        self.signatures_made += 1
        refresh_at = float(expiration - validity.refresh)
        self.earliest_refresh = min(self.earliest_refresh, refresh_at)
        return _Cached(content, head + key.private.sign(head + content), refresh_at)
