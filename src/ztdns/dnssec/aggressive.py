"""Aggressive use of validated NSEC/NSEC3 (RFC 8198): negative answers built from denials already cached.

A :class:`DenialCache` keeps the signed NSEC/NSEC3 records (and the zone's signed SOA) of responses that
validated as secure, sorted per zone in canonical (NSEC) or hash (NSEC3) order so the records that match or
cover a name are found by bisection. :meth:`DenialCache.synthesise` builds a candidate NXDOMAIN/NODATA
response from them — NXDOMAIN, NODATA, and a wildcard's NODATA (RFC 8198 §5.3) — and the caller must validate
it like any upstream answer and use it only if it is secure: a wildcard that holds the type (a positive answer),
an opt-out span or a stale chain simply means "ask upstream". No I/O here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.ANY.SOA import SOA

from ztdns.dnssec import denial
from ztdns.dnssec.denial import delegation_above, nsec3_hash, nsec_covers, owner_hash
from ztdns.dnssec.names import ancestry, canonical_key, is_child, wire_key

_MAX_RECORDS = 100_000  # across zones; beyond this the cache starts over (it only saves upstream queries)
_NODATA_FLAGS = dns.flags.Flag(dns.flags.QR | dns.flags.RD | dns.flags.RA | dns.rcode.NOERROR)
_NXDOMAIN_FLAGS = dns.flags.Flag(dns.flags.QR | dns.flags.RD | dns.flags.RA | dns.rcode.NXDOMAIN)


@dataclass
class _Signed:
    rrset: dns.rrset.RRset
    sig: dns.rrset.RRset
    expires: float


# NSEC owners by their canonical_key (canonical order, compared in C), or NSEC3 owner hashes.
_Key = tuple[bytes, ...] | bytes


@dataclass
class _Chain:
    """One zone's denial records in order: NSEC owners (canonical order) or NSEC3 owner hashes."""

    keys: list[_Key] = field(default_factory=list)
    records: list[_Signed] = field(default_factory=list)

    def put(self, key: _Key, signed: _Signed) -> bool:
        index = bisect.bisect_left(self.keys, key)
        if index < len(self.keys) and self.keys[index] == key:
            self.records[index] = signed
            return False
        self.keys.insert(index, key)
        self.records.insert(index, signed)
        return True

    def at(self, key: _Key) -> _Signed | None:
        index = bisect.bisect_left(self.keys, key)
        if index < len(self.keys) and self.keys[index] == key:
            return self.records[index]
        return None

    def before(self, key: _Key) -> _Signed | None:
        """The record ordered just before ``key`` (the last one when ``key`` sorts first: the chain wraps)."""
        if not self.keys:
            return None
        index = bisect.bisect_left(self.keys, key) - 1
        return self.records[index]


@dataclass
class _Zone:
    name: dns.name.Name
    soa: _Signed | None = None
    nsec: _Chain = field(default_factory=_Chain)
    nsec3: _Chain = field(default_factory=_Chain)
    nsec3_params: tuple[int, bytes] | None = None


def _signer(sig: dns.rrset.RRset) -> dns.name.Name:
    rrsig = sig[0]
    assert isinstance(rrsig, RRSIG)
    return rrsig.signer


class DenialCache:
    def __init__(self) -> None:
        self._zones: dict[bytes, _Zone] = {}  # by the zone's wire key
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, response: dns.message.Message, now: float) -> None:
        """Keep the signed SOA/NSEC/NSEC3 of a response that validated as secure."""
        sigs = {(wire_key(r.name), r.covers): r for r in response.authority if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in response.authority:
            sig = sigs.get((wire_key(rrset.name), rrset.rdtype))
            if sig is None or rrset.rdtype not in (dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3):
                continue
            zone_name = _signer(sig)
            zone_key = wire_key(zone_name)
            if zone_key not in ancestry(rrset.name):
                continue
            zone = self._zones.get(zone_key)
            if zone is None:
                zone = self._zones[zone_key] = _Zone(zone_name)
            signed = _Signed(rrset, sig, now + min(rrset.ttl, sig.ttl))
            if rrset.rdtype == dns.rdatatype.SOA:
                soa = rrset[0]
                assert isinstance(soa, SOA)
                # RFC 9077: negative answers live no longer than the SOA TTL and its minimum field.
                signed.expires = now + min(rrset.ttl, sig.ttl, soa.minimum)
                zone.soa = signed
            elif rrset.rdtype == dns.rdatatype.NSEC:
                self._size += zone.nsec.put(canonical_key(rrset.name), signed)
            else:
                self._add_nsec3(zone, zone_name, signed)
        if self._size > _MAX_RECORDS:
            self._zones.clear()
            self._size = 0

    def _add_nsec3(self, zone: _Zone, zone_name: dns.name.Name, signed: _Signed) -> None:
        nsec3 = signed.rrset[0]
        if not isinstance(nsec3, NSEC3) or not is_child(signed.rrset.name, zone_name) or nsec3.algorithm != 1:
            return
        try:
            digest = owner_hash(signed.rrset.name.labels[0])
        except ValueError:
            return
        params = (nsec3.iterations, nsec3.salt)
        if zone.nsec3_params != params:  # the zone changed its NSEC3 parameters: the old chain is useless
            self._size -= len(zone.nsec3.keys)
            zone.nsec3, zone.nsec3_params = _Chain(), params
        self._size += zone.nsec3.put(digest, signed)

    def synthesise(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, now: float
    ) -> dns.message.Message | None:
        """A candidate NXDOMAIN or NODATA response for ``name``/``rdtype`` from cached denials, or None.

        Unvalidated: the caller validates it and uses it only if it is secure.
        """
        if not self._zones:
            return None
        # DS is denied by the parent zone, everything else by the zone holding the name.
        keys = ancestry(name)
        lookup = keys[1:] if rdtype == dns.rdatatype.DS and len(keys) > 1 else keys
        zone = next((self._zones[key] for key in lookup if key in self._zones), None)
        if zone is None or zone.soa is None or zone.soa.expires <= now:
            return None
        zone_name = zone.name
        # Each candidate: (NODATA?, the records that would prove it). A name that does not exist is NXDOMAIN,
        # unless the wildcard its closest encloser holds exists: then the answer is that wildcard's NODATA
        # (a wildcard with the type would be a positive answer: asked upstream).
        candidates: list[tuple[bool, list[_Signed | None]]]
        if zone.nsec.keys:
            found, wildcards = self._nsec_records(zone.nsec, zone_name, name)
            match, cover = found[0], found[1]
            if match is None and (
                cover is None or not nsec_covers(cover.rrset, name) or delegation_above(cover.rrset, name)
            ):
                return None  # a gap in what we hold, or a child zone we hold nothing for: ask upstream
            if match is not None or _empty_non_terminal(cover, name):
                candidates = [(True, found)]
            else:
                candidates = [(False, found), (True, [cover, *wildcards])]
        elif zone.nsec3.keys and zone.nsec3_params is not None:
            found = self._nsec3_records(zone.nsec3, zone.nsec3_params, zone_name, name)
            candidates = [(True, found)] if found[0] is not None else [(False, found), (True, found)]
        else:
            return None
        for nodata, proving in candidates:
            records = {id(r): r for r in proving if r is not None and r.expires > now}
            # The proof's shape is checked here, cheaply; signatures are the caller's validation.
            if _proof(zone_name, [r.rrset for r in records.values()], name, rdtype, nodata) is denial.Proof.PROVEN:
                break
        else:
            return None
        # Only what the proof needs: the search above gathers records for every shape a proof could take, and
        # each extra NSEC3 with its RRSIG costs some 200 bytes (enough of them and the answer needs TCP).
        for key in list(records):
            rest = [r.rrset for k, r in records.items() if k != key]
            if _proof(zone_name, rest, name, rdtype, nodata) is denial.Proof.PROVEN:
                del records[key]
        # Built directly (make_query and make_response cost more than the rest of this): only the rcode, the
        # question and the sections of a recursion result are read, as for every response the resolver builds.
        response = dns.message.Message(id=0)
        response.flags = _NODATA_FLAGS if nodata else _NXDOMAIN_FLAGS
        response.question = [dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)]
        for signed in (zone.soa, *records.values()):
            for rrset in (signed.rrset, signed.sig):
                copy: dns.rrset.RRset = rrset.copy()
                copy.ttl = int(signed.expires - now)
                response.authority.append(copy)
        return response

    @staticmethod
    def _nsec_records(
        chain: _Chain, zone: dns.name.Name, name: dns.name.Name
    ) -> tuple[list[_Signed | None], list[_Signed | None]]:
        """([the NSEC at name, the one before it (covering it, if we hold it), those before *.ancestor for every
        ancestor in the zone (covering the wildcards)], [the NSECs at those wildcards, where we hold them])."""
        key = canonical_key(name)
        found = [chain.at(key), chain.before(key)]
        wildcards = []
        # The ancestors' keys are prefixes of the name's: from the parent (all labels but the first) to the zone.
        for depth in range(len(key) - 1, len(zone) - 1, -1):
            wildcard = (*key[:depth], b"*")
            found.append(chain.before(wildcard))
            wildcards.append(chain.at(wildcard))
        return found, wildcards

    @staticmethod
    def _nsec3_records(
        chain: _Chain, params: tuple[int, bytes], zone: dns.name.Name, name: dns.name.Name
    ) -> list[_Signed | None]:
        """[the NSEC3 matching name, then matching and covering records for name, its ancestors and their
        wildcards]: everything a closest-encloser, NODATA or wildcard proof can need."""
        iterations, salt = params
        keys = ancestry(name)
        digest = nsec3_hash(keys[0], salt, iterations)
        found = [chain.at(digest), chain.before(digest)]
        for ancestor in keys[1 : len(name) - len(zone) + 1]:
            wildcard = nsec3_hash(b"\x01*" + ancestor, salt, iterations)
            found += [chain.at(nsec3_hash(ancestor, salt, iterations)), chain.at(wildcard), chain.before(wildcard)]
        return found


def _proof(
    zone: dns.name.Name,
    rrsets: list[dns.rrset.RRset],
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    nodata: bool,
) -> denial.Proof:
    """Would these records (signatures aside) prove the denial? Wildcards and opt-out spans say no."""
    nsecs = [r for r in rrsets if r.rdtype == dns.rdatatype.NSEC]
    if nsecs:
        return (denial.nsec_nodata(nsecs, name, rdtype) if nodata else denial.nsec_nxdomain(nsecs, name)).proof
    nsec3s = denial.Nsec3Set.of(zone, rrsets)
    if nsec3s is None:
        return denial.Proof.MISSING
    result = denial.nsec3_nodata(nsec3s, name, rdtype) if nodata else denial.nsec3_nxdomain(nsec3s, name)
    return result.proof


def _empty_non_terminal(cover: _Signed | None, name: dns.name.Name) -> bool:
    if cover is None:
        return False
    nsec = cover.rrset[0]
    return isinstance(nsec, NSEC) and nsec.next.is_subdomain(name)
