"""Authenticated denial for online-signed zones: a precomputed NSEC3 chain, or compact denial (RFC 9824).

NSEC3 follows RFC 5155 with the RFC 9276 parameters (SHA-1, 0 extra iterations, empty salt, no opt-out). The
whole hashed chain is built once per zone version (hashing with 0 iterations is one SHA-1 per name), so an
answer only bisects a sorted list. Compact denial ("black lies") needs no chain: a non-existent name gets a
NOERROR answer with an NSEC at the name itself whose bitmap holds NXNAME, made on the fly and signed like any
RRset.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Iterable

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.NSEC3
import dns.rdtypes.ANY.NSEC3PARAM
import dns.rdtypes.util
import dns.rrset

from ztdns.authority.zone import DS, NS, Zone
from ztdns.dnssec.denial import nsec3_digest

IN = dns.rdataclass.IN
SHA1 = 1
_B32_TO_HEX = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghijklmnopqrstuv")


def nsec3_hash(name: dns.name.Name, salt: bytes = b"", iterations: int = 0) -> bytes:
    # Not the validator's memoised hash (nor the encoder's name cache): a zone's chain is hashed once per version.
    return nsec3_digest(name.canonicalize().to_wire(), salt, iterations)  # type: ignore[arg-type]


def nsec3param_rdata() -> dns.rdtypes.ANY.NSEC3PARAM.NSEC3PARAM:
    return dns.rdtypes.ANY.NSEC3PARAM.NSEC3PARAM(IN, dns.rdatatype.NSEC3PARAM, SHA1, 0, 0, b"")


def node_types(zone: Zone, name: dns.name.Name) -> set[int]:
    """Types an NSEC/NSEC3 bitmap lists for ``name`` in a signed zone (RFC 5155 §7.1, RFC 4034 §4.1.2)."""
    node = zone.nodes.get(name, {})
    if name in zone.cuts:
        # A delegation point is authoritative only for NS and DS; glue at the same name is not ours.
        cut_types: set[int] = {NS} | ({DS, dns.rdatatype.RRSIG} if DS in node else set())
        return cut_types
    types: set[int] = set(node)
    if types:
        types.add(dns.rdatatype.RRSIG)
    return types


def _bitmap(types: Iterable[int]) -> list[tuple[int, bytes]]:
    return list(dns.rdtypes.util.Bitmap.from_rdtypes(sorted(dns.rdatatype.RdataType.make(t) for t in types)).windows)


def _next_closer(qname: dns.name.Name, encloser: dns.name.Name) -> dns.name.Name:
    return qname.split(len(encloser) + 1)[1]


def _wildcard(encloser: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((b"*", *encloser.labels))


class Nsec3Chain:
    """The NSEC3 chain of one zone version; implements the answer code's ``Denial``."""

    def __init__(self, zone: Zone) -> None:
        self.origin = zone.origin
        self.ttl = zone.negative_ttl()
        entries = sorted((nsec3_hash(name), node_types(zone, name)) for name in zone.authoritative_names())
        self._hashes = [digest for digest, _ in entries]
        self._rrsets = [
            self._record(digest, self._hashes[(index + 1) % len(entries)], types)
            for index, (digest, types) in enumerate(entries)
        ]

    def rrsets(self) -> list[dns.rrset.RRset]:
        return list(self._rrsets)

    def updated(self, zone: Zone, touched: Iterable[dns.name.Name]) -> Nsec3Chain:
        """The chain of ``zone``, a version derived from this chain's by adding or changing data at ``touched``
        names only (no name removed, no delegation moved: see ``Zone.with_changes``): one hash per touched name
        and its new ancestors instead of one per name of the zone."""
        chain = Nsec3Chain.__new__(Nsec3Chain)
        chain.origin, chain.ttl = self.origin, self.ttl
        chain._hashes, chain._rrsets = list(self._hashes), list(self._rrsets)
        names: set[dns.name.Name] = set()
        for changed in touched:
            name = changed
            while name not in names:
                names.add(name)
                if name == self.origin or not name.is_subdomain(self.origin):
                    break
                name = name.parent()
        fresh: dict[bytes, dns.name.Name] = {}
        for name in names:
            if name not in zone.existing or zone.cut_above(name, include_self=False) is not None:
                continue
            digest = nsec3_hash(name)
            index = bisect.bisect_left(chain._hashes, digest)
            if index == len(chain._hashes) or chain._hashes[index] != digest:
                chain._hashes.insert(index, digest)
                chain._rrsets.insert(index, chain._rrsets[index - 1])  # placeholder, rebuilt below
            fresh[digest] = name
        count = len(chain._hashes)
        for digest, name in fresh.items():
            index = bisect.bisect_left(chain._hashes, digest)
            chain._rrsets[index] = chain._record(digest, chain._hashes[(index + 1) % count], node_types(zone, name))
            before = (index - 1) % count
            if chain._hashes[before] not in fresh:  # its next hash may have changed
                old = chain._rrsets[before]
                following = chain._hashes[index]
                if old[0].next != following:
                    chain._rrsets[before] = chain._renext(old, following)
        return chain

    def _record(self, digest: bytes, following: bytes, types: set[int]) -> dns.rrset.RRset:
        rdata = dns.rdtypes.ANY.NSEC3.NSEC3(IN, dns.rdatatype.NSEC3, SHA1, 0, 0, b"", following, _bitmap(types))
        owner = dns.name.Name((base64.b32encode(digest).translate(_B32_TO_HEX), *self.origin.labels))
        rrset = dns.rrset.RRset(owner, IN, dns.rdatatype.NSEC3)
        rrset.add(rdata, self.ttl)
        return rrset

    def _renext(self, old: dns.rrset.RRset, following: bytes) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(old.name, IN, dns.rdatatype.NSEC3)
        rrset.add(old[0].replace(next=following), self.ttl)
        return rrset

    def matching(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        digest = nsec3_hash(name)
        index = bisect.bisect_left(self._hashes, digest)
        if index < len(self._hashes) and self._hashes[index] == digest:
            return self._rrsets[index]
        return None

    def covering(self, name: dns.name.Name) -> dns.rrset.RRset:
        # The record with the greatest hash below the name's hash; wraps to the last record (RFC 5155 §7.2.1).
        index = bisect.bisect_left(self._hashes, nsec3_hash(name)) - 1
        return self._rrsets[index]

    def _unique(self, *rrsets: dns.rrset.RRset | None) -> list[dns.rrset.RRset]:
        out: list[dns.rrset.RRset] = []
        for rrset in rrsets:
            if rrset is not None and all(rrset.name != seen.name for seen in out):
                out.append(rrset)
        return out

    # -- Denial ----------------------------------------------------------------------------------------------

    def nxdomain(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> tuple[int, list[dns.rrset.RRset]]:
        proof = self._unique(
            self.matching(encloser),
            self.covering(_next_closer(qname, encloser)),
            self.covering(_wildcard(encloser)),
        )
        return dns.rcode.NXDOMAIN, proof

    def nodata(self, zone: Zone, qname: dns.name.Name) -> list[dns.rrset.RRset]:
        return self._unique(self.matching(qname))

    def wildcard_nodata(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> list[dns.rrset.RRset]:
        return self._unique(
            self.matching(encloser),
            self.covering(_next_closer(qname, encloser)),
            self.matching(_wildcard(encloser)),
        )

    def wildcard_answer(
        self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name
    ) -> list[dns.rrset.RRset] | None:
        return self._unique(self.covering(_next_closer(qname, encloser)))


class CompactDenial:
    """RFC 9824 compact denial: NSEC records minted per query at the query name; implements ``Denial``."""

    def __init__(self, zone: Zone) -> None:
        self.ttl = zone.negative_ttl()

    def _nsec(self, name: dns.name.Name, types: set[int]) -> dns.rrset.RRset:
        # The next name is the immediate successor of the name in canonical order: '\000.name' (RFC 9824 §3).
        successor = dns.name.Name((b"\x00", *name.labels))
        rdata = dns.rdtypes.ANY.NSEC.NSEC(
            IN, dns.rdatatype.NSEC, successor, _bitmap(types | {dns.rdatatype.RRSIG, dns.rdatatype.NSEC})
        )
        rrset = dns.rrset.RRset(name, IN, dns.rdatatype.NSEC)
        rrset.add(rdata, self.ttl)
        return rrset

    def nxdomain(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> tuple[int, list[dns.rrset.RRset]]:
        return dns.rcode.NOERROR, [self._nsec(qname, {dns.rdatatype.NXNAME})]

    def nodata(self, zone: Zone, qname: dns.name.Name) -> list[dns.rrset.RRset]:
        return [self._nsec(qname, node_types(zone, qname))]

    def wildcard_nodata(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> list[dns.rrset.RRset]:
        return [self._nsec(qname, node_types(zone, _wildcard(encloser)))]

    def wildcard_answer(
        self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name
    ) -> list[dns.rrset.RRset] | None:
        return None
