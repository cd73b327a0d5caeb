"""Authenticated denial of existence (RFC 4035 §5.4, RFC 5155 §8, RFC 7129): pure functions, no I/O.

Inputs are NSEC or NSEC3 RRsets whose signatures the validator has already checked. Each proof answers
"does this set of records prove that claim?" and says when the proof only holds insecurely (NSEC3 opt-out,
or more NSEC3 iterations than RFC 9276 lets us spend).
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import dns.name
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3

from ztdns.dnssec.names import canonical_key, common_labels, is_child, wire_key

_WILDCARD = dns.name.Name((b"*",))
_BASE32HEX = b"0123456789ABCDEFGHIJKLMNOPQRSTUV"
# (wire key of the name, salt, iterations) -> its NSEC3 hash. A cold lookup in an NSEC3 zone hashes the same
# names (the name, its ancestors, their wildcards) in the aggressive cache, then again in the validator.
_nsec3_hashes: dict[tuple[bytes, bytes, int], bytes] = {}
_NSEC3_HASHES_MAX = 10_000


class Proof(enum.Enum):
    PROVEN = "proven"
    INSECURE = "insecure"  # holds only through an opt-out NSEC3 span, or iterations above the limit
    MISSING = "missing"  # the records do not prove the claim


@dataclass(frozen=True)
class Denial:
    """What the records prove about a name; ``delegation`` is set when a DS denial shows a zone cut."""

    proof: Proof
    delegation: bool = False
    why: str = ""


def _wildcard_of(name: dns.name.Name) -> dns.name.Name:
    return _WILDCARD.concatenate(name)


def nsec3_digest(owner: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5155 §5: the SHA-1 hash of a name in lower-cased wire form (``dns.dnssec.nsec3_hash`` without its
    base32 text)."""
    digest = hashlib.sha1(owner + salt, usedforsecurity=False).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt, usedforsecurity=False).digest()
    return digest


def nsec3_hash(owner: bytes, salt: bytes, iterations: int) -> bytes:
    """:func:`nsec3_digest`, memoised (``owner``: a :func:`ztdns.dnssec.names.wire_key`)."""
    memo = (owner, salt, iterations)
    digest = _nsec3_hashes.get(memo)
    if digest is None:
        digest = nsec3_digest(owner, salt, iterations)
        if len(_nsec3_hashes) >= _NSEC3_HASHES_MAX:
            _nsec3_hashes.clear()
        _nsec3_hashes[memo] = digest
    return digest


def owner_hash(label: bytes) -> bytes:
    """The hash an NSEC3 owner label spells in base32hex (raises ValueError when it spells none).

    ``int(text, 32)`` reads exactly the base32hex digits; ``base64.b32hexdecode`` is a Python loop, and takes
    the rest (padding, lengths that are not whole 40-bit groups)."""
    upper = label.upper()
    if upper and len(upper) % 8 == 0 and not upper.translate(None, _BASE32HEX):
        return int(upper, 32).to_bytes(len(upper) * 5 // 8, "big")
    return base64.b32hexdecode(upper)


def _has(rrset: dns.rrset.RRset, rdtype: dns.rdatatype.RdataType) -> bool:
    rdata = rrset[0]
    assert isinstance(rdata, NSEC | NSEC3)
    return _in_windows(rdata.windows, rdtype)


def _in_windows(windows: Sequence[tuple[int, bytes]], rdtype: int) -> bool:
    window, offset = divmod(rdtype, 256)
    byte, bit = divmod(offset, 8)
    for number, bitmap in windows:
        if number == window:
            return byte < len(bitmap) and bool(bitmap[byte] & (0x80 >> bit))
    return False


def _is_parent_side(rrset: dns.rrset.RRset) -> bool:
    """An NSEC/NSEC3 at a delegation (NS without SOA) speaks for the parent only."""
    return _has(rrset, dns.rdatatype.NS) and not _has(rrset, dns.rdatatype.SOA)


def _nodata_at(rrset: dns.rrset.RRset, qtype: dns.rdatatype.RdataType) -> Denial | None:
    """A matching record proves NODATA if it lacks the type and CNAME (and, unless asking for DS, is not
    the parent's side of a delegation)."""
    if _has(rrset, qtype) or _has(rrset, dns.rdatatype.CNAME):
        return None
    if qtype == dns.rdatatype.DS:
        return Denial(Proof.PROVEN, delegation=_has(rrset, dns.rdatatype.NS))
    if _is_parent_side(rrset):
        return None
    return Denial(Proof.PROVEN)


# ----- NSEC -----------------------------------------------------------------------------------------------


def nsec_covers(rrset: dns.rrset.RRset, name: dns.name.Name) -> bool:
    nsec = rrset[0]
    assert isinstance(nsec, NSEC)
    owner, following, key = canonical_key(rrset.name), canonical_key(nsec.next), canonical_key(name)
    if owner < following:
        return owner < key < following
    return key > owner or key < following  # the last NSEC wraps around to the apex


def _nsec_closest_encloser(rrset: dns.rrset.RRset, name: dns.name.Name) -> dns.name.Name:
    nsec = rrset[0]
    assert isinstance(nsec, NSEC)
    common = max(common_labels(name, rrset.name), common_labels(name, nsec.next))
    return dns.name.Name(name.labels[-common:]) if common > 1 else dns.name.root


def nsec_nxdomain(nsecs: Sequence[dns.rrset.RRset], name: dns.name.Name) -> Denial:
    cover = next((r for r in nsecs if nsec_covers(r, name) and not delegation_above(r, name)), None)
    if cover is None:
        return Denial(Proof.MISSING, why=f"no NSEC covers {name}")
    wildcard = _wildcard_of(_nsec_closest_encloser(cover, name))
    if not any(nsec_covers(r, wildcard) for r in nsecs):
        return Denial(Proof.MISSING, why=f"no NSEC covers {wildcard}")
    return Denial(Proof.PROVEN)


def delegation_above(rrset: dns.rrset.RRset, name: dns.name.Name) -> bool:
    """Is the NSEC's owner a zone cut or a DNAME above ``name``? Then it says nothing about names below it
    (RFC 4035 §5.4, RFC 6672 §5.3.4.1): they live in another zone or are redirected."""
    cut = _is_parent_side(rrset) or _has(rrset, dns.rdatatype.DNAME)
    return cut and name.is_subdomain(rrset.name) and name != rrset.name


def nsec_nodata(nsecs: Sequence[dns.rrset.RRset], name: dns.name.Name, qtype: dns.rdatatype.RdataType) -> Denial:
    for rrset in nsecs:
        if rrset.name == name:
            return _nodata_at(rrset, qtype) or Denial(Proof.MISSING, why=f"NSEC at {name} lists the type")
    for rrset in nsecs:
        nsec = rrset[0]
        assert isinstance(nsec, NSEC)
        if nsec_covers(rrset, name) and nsec.next.is_subdomain(name) and not delegation_above(rrset, name):
            return Denial(Proof.PROVEN)  # an empty non-terminal
    # Wildcard NODATA: the name does not exist and the wildcard that would match lacks the type.
    for rrset in nsecs:
        if nsec_covers(rrset, name) and not delegation_above(rrset, name):
            wildcard = _wildcard_of(_nsec_closest_encloser(rrset, name))
            for other in nsecs:
                if other.name == wildcard:
                    denial = _nodata_at(other, qtype)
                    if denial is not None:
                        return denial
    return Denial(Proof.MISSING, why=f"no NSEC proves {name} has no {dns.rdatatype.to_text(qtype)}")


def nsec_wildcard_expansion(nsecs: Sequence[dns.rrset.RRset], name: dns.name.Name) -> Denial:
    """An answer synthesised from a wildcard is only valid if the name itself does not exist."""
    if any(nsec_covers(r, name) for r in nsecs):
        return Denial(Proof.PROVEN)
    return Denial(Proof.MISSING, why=f"no NSEC proves {name} does not exist (wildcard answer)")


# ----- NSEC3 ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nsec3Set:
    """NSEC3 records of one zone with their owner hashes decoded."""

    zone: dns.name.Name
    records: tuple[tuple[bytes, dns.rrset.RRset], ...]
    iterations: int
    salt: bytes

    @classmethod
    def of(cls, zone: dns.name.Name, rrsets: Sequence[dns.rrset.RRset]) -> Nsec3Set | None:
        records: list[tuple[bytes, dns.rrset.RRset]] = []
        params: set[tuple[int, bytes]] = set()
        for rrset in rrsets:
            nsec3 = rrset[0]
            if not isinstance(nsec3, NSEC3) or not is_child(rrset.name, zone) or nsec3.algorithm != 1:
                continue
            try:
                digest = owner_hash(rrset.name.labels[0])
            except ValueError:
                continue
            params.add((nsec3.iterations, nsec3.salt))
            records.append((digest, rrset))
        if not records or len(params) != 1:
            return None
        iterations, salt = params.pop()
        return cls(zone, tuple(records), iterations, salt)

    def hash(self, name: dns.name.Name) -> bytes:
        return nsec3_hash(wire_key(name), self.salt, self.iterations)

    def matching(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        digest = self.hash(name)
        return next((rrset for owner, rrset in self.records if owner == digest), None)

    def covering(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        digest = self.hash(name)
        for owner, rrset in self.records:
            nsec3 = rrset[0]
            assert isinstance(nsec3, NSEC3)
            following = nsec3.next
            if owner < digest < following or (following <= owner and (digest > owner or digest < following)):
                return rrset
        return None

    def closest_encloser(self, name: dns.name.Name) -> tuple[dns.name.Name, dns.rrset.RRset] | None:
        """RFC 5155 §8.3: the closest encloser (matched) and the covering record of the next closer name."""
        candidate = name
        while candidate != self.zone and candidate.is_subdomain(self.zone):
            parent = candidate.parent()
            match = self.matching(parent)
            if match is not None:
                if parent != self.zone and (_is_parent_side(match) or _has(match, dns.rdatatype.DNAME)):
                    return None  # RFC 5155 §8.3: a delegation or DNAME cannot be the closest encloser
                cover = self.covering(candidate)
                if cover is None:
                    return None
                return parent, cover
            candidate = parent
        return None


def _opt_out(rrset: dns.rrset.RRset) -> bool:
    nsec3 = rrset[0]
    assert isinstance(nsec3, NSEC3)
    return bool(nsec3.flags & 1)


def nsec3_nxdomain(nsec3s: Nsec3Set, name: dns.name.Name) -> Denial:
    found = nsec3s.closest_encloser(name)
    if found is None:
        return Denial(Proof.MISSING, why=f"no NSEC3 closest encloser proof for {name}")
    encloser, next_closer_cover = found
    if nsec3s.covering(_wildcard_of(encloser)) is None:
        return Denial(Proof.MISSING, why=f"no NSEC3 covers {_wildcard_of(encloser)}")
    if _opt_out(next_closer_cover):
        return Denial(Proof.INSECURE, why="NXDOMAIN covered by an opt-out NSEC3")
    return Denial(Proof.PROVEN)


def nsec3_nodata(nsec3s: Nsec3Set, name: dns.name.Name, qtype: dns.rdatatype.RdataType) -> Denial:
    match = nsec3s.matching(name)
    if match is not None:
        return _nodata_at(match, qtype) or Denial(Proof.MISSING, why=f"NSEC3 for {name} lists the type")
    found = nsec3s.closest_encloser(name)
    if found is None:
        return Denial(Proof.MISSING, why=f"no NSEC3 matches {name}")
    encloser, next_closer_cover = found
    if qtype == dns.rdatatype.DS and _opt_out(next_closer_cover):
        # RFC 5155 §8.6: no DS, and possibly an unsigned delegation inside an opt-out span.
        return Denial(Proof.INSECURE, delegation=True, why="DS denial through an opt-out NSEC3")
    wildcard = nsec3s.matching(_wildcard_of(encloser))
    if wildcard is not None:
        denial = _nodata_at(wildcard, qtype)
        if denial is not None and _opt_out(next_closer_cover):
            # RFC 5155 §9.2: the next closer name may be an unsigned delegation inside the opt-out span.
            return Denial(Proof.INSECURE, why="wildcard NODATA in an opt-out span")
        if denial is not None:
            return denial
    return Denial(Proof.MISSING, why=f"no NSEC3 proves {name} has no {dns.rdatatype.to_text(qtype)}")


def nsec3_wildcard_expansion(nsec3s: Nsec3Set, name: dns.name.Name, source: dns.name.Name) -> Denial:
    """``source`` is the wildcard's closest encloser (the owner of ``*.source``)."""
    next_closer = dns.name.Name(name.labels[-(len(source) + 1) :])
    cover = nsec3s.covering(next_closer)
    if cover is None:
        return Denial(Proof.MISSING, why=f"no NSEC3 covers {next_closer} (wildcard answer)")
    if _opt_out(cover):
        return Denial(Proof.INSECURE, why="wildcard answer in an opt-out span")
    return Denial(Proof.PROVEN)
