"""Online RRSIG generation with a signature cache (RFC 4034 §3.1.8.1 signed data, built here, not by
dnspython).

The signed data of an RRset is ``RRSIG rdata without signature | RR(1) | RR(2) ...`` with RRs in canonical
form and order. We build it from precomputed pieces (the signer name wire, the owner|type|class|TTL prefix)
and call the key's signer once per key. Signatures are cached per (owner, type, key) together with the exact
RRset content they cover: a lookup whose content differs (changed data, TTL) misses and re-signs, so a changed
RRset can never be served with the signature of its old content. Entries are refreshed ``refresh`` seconds
before they expire.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.rrset

from ztdns.dnssec.keys import ZoneKey

Clock = Callable[[], float]

# Signed by the key-signing keys: the DNSKEY RRset and the records that tell the parent about it.
KSK_SIGNED_TYPES = frozenset({dns.rdatatype.DNSKEY, dns.rdatatype.CDS, dns.rdatatype.CDNSKEY})
RRSIG = dns.rdatatype.RRSIG
# Validity starts an hour back so clients with a slow clock accept fresh signatures.
INCEPTION_OFFSET = 3600
_RRSIG_HEAD = struct.Struct("!HBBIIIH")
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
    content: bytes
    rdata: dns.rdtypes.ANY.RRSIG.RRSIG
    refresh_at: float


def canonical_rrset(rrset: dns.rrset.RRset, origin: dns.name.Name | None = None) -> bytes:
    """RR(1) | RR(2) ... of RFC 4034 §3.1.8.1: canonical owner, class, TTL, sorted unique canonical rdata."""
    owner = rrset.name.canonicalize().to_wire()
    assert owner is not None
    prefix = owner + _RR_HEAD.pack(rrset.rdtype, rrset.rdclass, rrset.ttl)
    rdatas = sorted({rd.to_digestable(origin) for rd in rrset})
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
        self._signer_wire = origin.canonicalize().to_wire() or b""
        self._zsks: Sequence[ZoneKey] = ()
        self._ksks: Sequence[ZoneKey] = ()
        self._cache: dict[tuple[dns.name.Name, int, int], _Cached] = {}
        self.signatures_made = 0

    def set_keys(self, zsks: Sequence[ZoneKey], ksks: Sequence[ZoneKey]) -> None:
        """Switch to a new key set; cached signatures of keys no longer used are dropped."""
        self._zsks, self._ksks = tuple(zsks), tuple(ksks)
        tags = {k.tag for k in (*self._zsks, *self._ksks)}
        self._cache = {key: entry for key, entry in self._cache.items() if key[2] in tags}

    def keys_for(self, rdtype: int) -> Sequence[ZoneKey]:
        return self._ksks if rdtype in KSK_SIGNED_TYPES else self._zsks

    def rrsig(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset | None:
        keys = self.keys_for(rrset.rdtype)
        if not keys or rrset.rdtype == RRSIG:
            return None
        content = canonical_rrset(rrset)
        now = self.clock()
        sigs = dns.rrset.RRset(rrset.name, rrset.rdclass, RRSIG, rrset.rdtype)
        for key in keys:
            cache_key = (rrset.name, rrset.rdtype, key.tag)
            cached = self._cache.get(cache_key)
            if cached is None or cached.content != content or now >= cached.refresh_at:
                cached = self._sign(rrset, content, key, now)
                self._cache.pop(cache_key, None)
                if len(self._cache) >= self.max_entries:
                    del self._cache[next(iter(self._cache))]
                self._cache[cache_key] = cached
            sigs.add(cached.rdata, rrset.ttl)
        return sigs

    def sign_fresh(self, rrset: dns.rrset.RRset, key: ZoneKey) -> dns.rdtypes.ANY.RRSIG.RRSIG:
        """One new signature, bypassing the cache (benchmarks, tests)."""
        return self._sign(rrset, canonical_rrset(rrset), key, self.clock()).rdata

    def _sign(self, rrset: dns.rrset.RRset, content: bytes, key: ZoneKey, now: float) -> _Cached:
        validity = self.validity
        inception = int(now) - INCEPTION_OFFSET
        expiration = int(now) + validity.lifetime + random.randint(0, validity.jitter)
        labels = rrsig_labels(rrset.name)
        head = _RRSIG_HEAD.pack(
            rrset.rdtype,
            key.private.algorithm,
            labels,
            rrset.ttl,
            expiration & 0xFFFFFFFF,
            inception,
            key.tag,
        )
        signature = key.private.sign(head + self._signer_wire + content)
        rdata = dns.rdtypes.ANY.RRSIG.RRSIG(
            dns.rdataclass.IN,
            RRSIG,
            rrset.rdtype,
            key.private.algorithm,
            labels,
            rrset.ttl,
            expiration,
            inception,
            key.tag,
            self.origin,
            signature,
        )
        self.signatures_made += 1
        return _Cached(content, rdata, float(expiration - validity.refresh))
