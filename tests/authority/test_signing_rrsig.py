"""Our hand-built RRSIGs equal dnspython's reference signer byte for byte (Ed25519 is deterministic), validate
for
ECDSA, and the cache never serves a signature for changed data."""

from __future__ import annotations

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.rrset
import pytest

from ztdns.authority.keys import ECDSAP256SHA256, ED25519, FileKey, ZoneKey
from ztdns.authority.signing import Validity, ZoneSigner

ORIGIN = dns.name.from_text("corp.internal.")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(algorithm: int) -> tuple[ZoneSigner, ZoneKey, Clock]:
    clock = Clock()
    key = ZoneKey.make(ORIGIN, FileKey.generate(algorithm), sep=False)
    signer = ZoneSigner(ORIGIN, Validity(lifetime=1000, jitter=0, refresh=100), clock)
    signer.set_keys([key], [key])
    return signer, key, clock


def as_rrsig(wire: bytes) -> dns.rdtypes.ANY.RRSIG.RRSIG:
    rdata = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.RRSIG, wire, 0, len(wire))
    assert isinstance(rdata, dns.rdtypes.ANY.RRSIG.RRSIG)
    return rdata


RRSETS = [
    dns.rrset.from_text("www.corp.internal.", 300, "IN", "A", "192.0.2.2", "192.0.2.1"),
    dns.rrset.from_text("*.wild.corp.internal.", 60, "IN", "A", "192.0.2.20"),
    dns.rrset.from_text("MiXeD.Corp.Internal.", 60, "IN", "MX", "10 Mail.Corp.Internal."),
    dns.rrset.from_text("corp.internal.", 3600, "IN", "SOA", "ns1.corp.internal. h.corp.internal. 1 2 3 4 5"),
    dns.rrset.from_text("t.corp.internal.", 30, "IN", "TXT", '"b"', '"a"', '"ccc"'),
    dns.rrset.from_text("v6.corp.internal.", 30, "IN", "AAAA", "2001:db8::2", "2001:db8::1"),
]


@pytest.mark.parametrize("rrset", RRSETS, ids=lambda r: f"{r.name}/{dns.rdatatype.to_text(r.rdtype)}")
def test_ed25519_signature_equals_dnspython_reference(rrset: dns.rrset.RRset) -> None:
    signer, key, _ = make(ED25519)
    ours = as_rrsig(signer.sign_fresh(rrset, key))
    reference = dns.dnssec.sign(
        rrset,
        key.private._key,  # type: ignore[attr-defined]
        ORIGIN,
        key.dnskey,
        inception=ours.inception,
        expiration=ours.expiration,
    )
    assert ours == reference


@pytest.mark.parametrize("rrset", RRSETS, ids=lambda r: f"{r.name}/{dns.rdatatype.to_text(r.rdtype)}")
def test_ecdsa_signature_validates(rrset: dns.rrset.RRset) -> None:
    signer, key, _ = make(ECDSAP256SHA256)
    sigs = signer.rrsig(rrset)
    assert sigs is not None
    dns.dnssec.validate(rrset, sigs, {ORIGIN: [key.dnskey]}, now=1_800_000_000)  # type: ignore[dict-item]
    # The uncached path (the benchmark's) makes the same kind of RDATA.
    fresh = dns.rrset.RRset(rrset.name, rrset.rdclass, dns.rdatatype.RRSIG, rrset.rdtype)
    fresh.add(as_rrsig(signer.sign_fresh(rrset, key)), rrset.ttl)
    dns.dnssec.validate(rrset, fresh, {ORIGIN: [key.dnskey]}, now=1_800_000_000)  # type: ignore[dict-item]


def test_signature_covers_exactly_the_rrset() -> None:
    signer, key, _ = make(ECDSAP256SHA256)
    rrset = RRSETS[0]
    sigs = signer.rrsig(rrset)
    assert sigs is not None
    tampered = dns.rrset.from_text("www.corp.internal.", 300, "IN", "A", "192.0.2.2", "192.0.2.9")
    with pytest.raises(dns.exception.ValidationFailure):
        dns.dnssec.validate(tampered, sigs, {ORIGIN: [key.dnskey]}, now=1_800_000_000)  # type: ignore[dict-item]


def test_cache_reuses_and_refreshes_and_never_serves_stale_data() -> None:
    signer, key, clock = make(ECDSAP256SHA256)
    rrset = RRSETS[0]
    first = signer.rrsig(rrset)
    assert signer.rrsig(rrset) == first and signer.signatures_made == 1
    changed = dns.rrset.from_text("www.corp.internal.", 300, "IN", "A", "192.0.2.3")
    fresh = signer.rrsig(changed)
    assert fresh is not None and fresh != first and signer.signatures_made == 2
    dns.dnssec.validate(changed, fresh, {ORIGIN: [key.dnskey]}, now=clock.now)  # type: ignore[dict-item]
    clock.now += 950  # inside the refresh window (100 s before expiry)
    refreshed = signer.rrsig(changed)
    assert refreshed is not None and signer.signatures_made == 3
    assert refreshed[0].expiration > fresh[0].expiration
