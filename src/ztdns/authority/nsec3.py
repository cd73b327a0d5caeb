"""Authenticated denial for online-signed zones: a precomputed NSEC3 chain, or compact denial (RFC 9824).

NSEC3 follows RFC 5155 with the RFC 9276 parameters (SHA-1, 0 extra iterations, empty salt, no opt-out). The
whole hashed chain is built when a zone version is built whole (hashing with 0 iterations is one SHA-1 per
name), so an answer only bisects a sorted list; an update derives the next chain by hashing the changed names
only. The chain is kept in blocks, and a derived chain copies only the blocks it changes. Compact denial
("black lies") needs no chain: a non-existent name gets a NOERROR answer with an NSEC at the name itself whose
bitmap holds NXNAME, made on the fly and signed like any RRset.
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


# Entries per block of the chain: a derived chain copies the list of blocks and the blocks it changes.
BLOCK = 512


class Nsec3Chain:
    """The NSEC3 chain of one zone version; implements the answer code's ``Denial``.

    The sorted hashes and their NSEC3 RRsets are kept in blocks of about ``BLOCK`` entries (``_firsts`` holds
    each block's first hash), never modified once the chain is published: :meth:`updated` copies the blocks
    it changes."""

    def __init__(self, zone: Zone) -> None:
        self.origin = zone.origin
        self.ttl = zone.negative_ttl()
        entries = sorted((nsec3_hash(name), node_types(zone, name)) for name in zone.authoritative_names())
        hashes = [digest for digest, _ in entries]
        rrsets = [
            self._record(digest, hashes[(index + 1) % len(entries)], types)
            for index, (digest, types) in enumerate(entries)
        ]
        self._hashes = [hashes[i : i + BLOCK] for i in range(0, len(hashes), BLOCK)]
        self._rrsets = [rrsets[i : i + BLOCK] for i in range(0, len(rrsets), BLOCK)]
        self._firsts = [block[0] for block in self._hashes]
        # Hashes whose record differs from the chain this one was derived from (None: built whole).
        self.changed: frozenset[bytes] | None = None

    def rrsets(self) -> list[dns.rrset.RRset]:
        return [rrset for block in self._rrsets for rrset in block]

    def updated(self, zone: Zone, touched: Iterable[dns.name.Name]) -> Nsec3Chain:
        """The chain of ``zone``, a version derived from this chain's by changing data at ``touched`` names only
        (names added or removed, no delegation moved: see ``Zone.with_changes``): one hash per touched name and
        its ancestors (empty non-terminals come and go with them) instead of one per name of the zone."""
        chain = Nsec3Chain.__new__(Nsec3Chain)
        chain.origin, chain.ttl, chain.changed = self.origin, self.ttl, None
        chain._hashes, chain._rrsets, chain._firsts = list(self._hashes), list(self._rrsets), list(self._firsts)
        owned: set[int] = set()  # ids of the blocks copied for this chain (free to modify)
        names: set[dns.name.Name] = set()
        for changed in touched:
            name = changed
            while name not in names:
                names.add(name)
                if name == self.origin or not name.is_subdomain(self.origin):
                    break
                name = name.parent()
        fresh: dict[bytes, dns.name.Name] = {}
        gone: list[bytes] = []
        for name in names:
            digest = nsec3_hash(name)
            block, index = chain._find(digest)
            found = index < len(chain._hashes[block]) and chain._hashes[block][index] == digest
            if name in zone.existing and zone.cut_above(name, include_self=False) is None:
                if not found:
                    chain._insert(block, index, digest, owned)
                fresh[digest] = name
            elif found:
                chain._delete(block, index, owned)
                gone.append(digest)
        for digest, name in fresh.items():
            block, index = chain._find(digest)
            following = chain._hashes[block][index + 1] if index + 1 < len(chain._hashes[block]) else None
            chain._set(
                block, index, chain._record(digest, following or chain._after(block), node_types(zone, name)), owned
            )
        # The records before a new or removed hash now point elsewhere.
        relinked: set[bytes] = set()
        for digest in [*fresh, *gone]:
            block, index = chain._find(digest)
            block, index = chain._before(block, index)
            if chain._hashes[block][index] in fresh:
                continue
            old = chain._rrsets[block][index]
            following = chain._hashes[block][index + 1] if index + 1 < len(chain._hashes[block]) else None
            following = following or chain._after(block)
            if old[0].next != following:
                chain._set(block, index, chain._renext(old, following), owned)
                relinked.add(chain._hashes[block][index])
        chain.changed = frozenset((*fresh, *gone, *relinked))
        return chain

    def owner(self, digest: bytes) -> dns.name.Name:
        """The NSEC3 owner name of a hash."""
        return dns.name.Name((base64.b32encode(digest).translate(_B32_TO_HEX), *self.origin.labels))

    def record(self, digest: bytes) -> dns.rrset.RRset | None:
        """The NSEC3 RRset of a hash in the chain, None when the hash is not in it."""
        block, index = self._find(digest)
        hashes = self._hashes[block]
        return self._rrsets[block][index] if index < len(hashes) and hashes[index] == digest else None

    # -- the blocks ------------------------------------------------------------------------------------------

    def _find(self, digest: bytes) -> tuple[int, int]:
        """(block, index) of the first hash not below ``digest`` (index may be the block's length)."""
        block = max(bisect.bisect_right(self._firsts, digest) - 1, 0)
        return block, bisect.bisect_left(self._hashes[block], digest)

    def _before(self, block: int, index: int) -> tuple[int, int]:
        """The entry before (block, index), wrapping from the first to the last."""
        if index > 0:
            return block, index - 1
        block = (block - 1) % len(self._hashes)
        return block, len(self._hashes[block]) - 1

    def _after(self, block: int) -> bytes:
        """The first hash after ``block``, wrapping to the first."""
        return self._firsts[(block + 1) % len(self._firsts)]

    def _own(self, block: int, owned: set[int]) -> None:
        if id(self._hashes[block]) not in owned:
            self._hashes[block], self._rrsets[block] = list(self._hashes[block]), list(self._rrsets[block])
            owned.add(id(self._hashes[block]))

    def _insert(self, block: int, index: int, digest: bytes, owned: set[int]) -> None:
        self._own(block, owned)
        hashes, rrsets = self._hashes[block], self._rrsets[block]
        hashes.insert(index, digest)
        rrsets.insert(index, rrsets[index - 1])  # a placeholder: updated() makes the record
        self._firsts[block] = hashes[0]
        if len(hashes) >= 2 * BLOCK:
            self._hashes[block : block + 1] = [hashes[:BLOCK], hashes[BLOCK:]]
            self._rrsets[block : block + 1] = [rrsets[:BLOCK], rrsets[BLOCK:]]
            self._firsts[block : block + 1] = [hashes[0], hashes[BLOCK]]
            owned.update((id(self._hashes[block]), id(self._hashes[block + 1])))

    def _delete(self, block: int, index: int, owned: set[int]) -> None:
        self._own(block, owned)
        del self._hashes[block][index], self._rrsets[block][index]
        if self._hashes[block]:
            self._firsts[block] = self._hashes[block][0]
        else:
            del self._hashes[block], self._rrsets[block], self._firsts[block]

    def _set(self, block: int, index: int, rrset: dns.rrset.RRset, owned: set[int]) -> None:
        self._own(block, owned)
        self._rrsets[block][index] = rrset

    def _record(self, digest: bytes, following: bytes, types: set[int]) -> dns.rrset.RRset:
        rdata = dns.rdtypes.ANY.NSEC3.NSEC3(IN, dns.rdatatype.NSEC3, SHA1, 0, 0, b"", following, _bitmap(types))
        rrset = dns.rrset.RRset(self.owner(digest), IN, dns.rdatatype.NSEC3)
        rrset.add(rdata, self.ttl)
        return rrset

    def _renext(self, old: dns.rrset.RRset, following: bytes) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(old.name, IN, dns.rdatatype.NSEC3)
        rrset.add(old[0].replace(next=following), self.ttl)
        return rrset

    def matching(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        return self.record(nsec3_hash(name))

    def covering(self, name: dns.name.Name) -> dns.rrset.RRset:
        # The record with the greatest hash below the name's hash; wraps to the last record (RFC 5155 §7.2.1).
        block, index = self._before(*self._find(nsec3_hash(name)))
        return self._rrsets[block][index]

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
