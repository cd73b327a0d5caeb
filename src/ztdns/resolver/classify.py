"""Recursion's view of one authoritative response: what a server for the zone may say (scrubbing out of
bailiwick records, undoing 0x20 in owner names) and what the response is (answer, CNAME, referral, NXDOMAIN,
NODATA, lame). Sans-IO.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS

from ztdns.dnssec.names import wire_key
from ztdns.resolver.delegation import Delegation
from ztdns.wire.header import rcode_of
from ztdns.wire.parse import known_name


class Lame(Exception):
    """The server gave an answer no server for the zone should give (it does not serve the zone)."""


def scrub(response: dns.message.Message, zone: dns.name.Name) -> dns.message.Message:
    """Drop records a server for ``zone`` has no authority to give (out of bailiwick), and undo the 0x20 case
    randomisation servers echo into owner names."""
    # Compared as lower-cased label tuples (in C), not with Name.is_subdomain (a Python loop per label).
    suffix = tuple(map(bytes.lower, zone.labels))
    depth = len(suffix)
    for section in (response.answer, response.authority, response.additional):
        kept = []
        for rrset in section:
            labels = rrset.name.labels
            lowered = known_name(labels)[1]
            if lowered[-depth:] != suffix:
                continue
            if lowered != labels:  # most owner names are lower-case already: no new Name for those
                rrset.name = known_name(lowered)[0]
            kept.append(rrset)
        section[:] = kept
    return response


class ResponseType(enum.Enum):
    ANSWER = "answer"  # data for the question, or a CNAME/DNAME chain toward it
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    REFERRAL = "referral"  # a downward delegation toward the name


@dataclass(slots=True)
class Classified:
    kind: ResponseType
    referral: Delegation | None = None


_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


def classify(
    response: dns.message.Message,
    zone: dns.name.Name,
    qname: dns.name.Name,
    qtype: dns.rdatatype.RdataType,
    now: float,
    harden_glue: bool = True,
) -> Classified:
    """What a NOERROR/NXDOMAIN ``response`` from a server for ``zone`` is, by its content — never by the AA flag
    (as Unbound's ``iter_classify``). The answer section is cut down to the question's chain (an A record does
    not ride along in the answer to AAAA). Raises :class:`Lame` for an upward or sideways referral, a referral
    to the zone itself without authority, and :class:`CnameLoop` for a CNAME chain that loops in the response.
    Call before :func:`scrub`: upward referrals and out-of-zone glue are judged on what the server sent."""
    response.answer = _chain(response.answer, qname, qtype)
    if response.answer:
        return Classified(ResponseType.ANSWER)
    if rcode_of(response) == dns.rcode.NXDOMAIN:
        return Classified(ResponseType.NXDOMAIN)
    authority = response.authority
    if any(r.rdtype == dns.rdatatype.SOA for r in authority):
        return Classified(ResponseType.NODATA)
    ns_set = next((r for r in authority if r.rdtype == dns.rdatatype.NS), None)
    if ns_set is None:
        return Classified(ResponseType.NODATA)
    child = ns_set.name
    if child == zone and response.flags & dns.flags.AA:
        return Classified(ResponseType.NODATA)  # NODATA with the zone's own NS set instead of its SOA
    if not (child.is_subdomain(zone) and child != zone and qname.is_subdomain(child)):
        # Names from the response are in the 0x20 case we sent until scrub: EDE texts show them canonical.
        raise Lame(f"referral from {zone} to {child.canonicalize()} is not downward toward {qname}")
    return Classified(ResponseType.REFERRAL, _delegation(response, ns_set, zone, now, harden_glue))


def _delegation(
    response: dns.message.Message, ns_set: dns.rrset.RRset, zone: dns.name.Name, now: float, harden_glue: bool
) -> Delegation:
    """The referral's name servers with the addresses of those whose glue may be trusted: inside the referring
    zone (in bailiwick), or any with ``harden_glue`` off. The others are looked up when needed."""
    names = [rdata.target for rdata in ns_set if isinstance(rdata, NS)]
    glue: dict[dns.name.Name, list[str]] = {}
    for rrset in response.additional:
        trusted = rrset.name.is_subdomain(zone) or not harden_glue
        if rrset.rdtype in _ADDRESS_TYPES and rrset.name in names and trusted:
            glue.setdefault(rrset.name, []).extend(rdata.address for rdata in rrset)
    addresses = [address for name in names for address in glue.get(name, [])]
    unresolved = [name for name in names if name not in glue]
    # The zone as scrub spells owner names (servers echo our 0x20 case into them).
    return Delegation(ns_set.name.canonicalize(), names, addresses, now + min(ns_set.ttl, 86_400), unresolved)


class CnameLoop(Exception):
    pass


def _chain(
    answer: list[dns.rrset.RRset], qname: dns.name.Name, qtype: dns.rdatatype.RdataType
) -> list[dns.rrset.RRset]:
    """The RRsets of the answer section that answer ``qname``/``qtype``: the CNAME chain from ``qname`` (DNAMEs
    above its names) and the data of the type asked at its end, with their RRSIGs; nothing else."""
    if not answer:
        return answer
    # Names compared by wire keys (hashed and compared in C), not as Names (Python loops over their labels).
    names = [qname]
    current = wire_key(qname)
    keys = {current}
    while True:
        cname = next((r for r in answer if r.rdtype == dns.rdatatype.CNAME and wire_key(r.name) == current), None)
        if cname is None or qtype in (dns.rdatatype.CNAME, dns.rdatatype.ANY):
            break
        rdata = cname[0]
        assert isinstance(rdata, CNAME)
        current = wire_key(rdata.target)
        if current in keys:
            raise CnameLoop(f"CNAME loop at {rdata.target.canonicalize()}")
        names.append(rdata.target)
        keys.add(current)
    kept = []
    for rrset in answer:
        rdtype = rrset.covers if rrset.rdtype == dns.rdatatype.RRSIG else rrset.rdtype
        if qtype == dns.rdatatype.RRSIG:
            wanted = wire_key(rrset.name) in keys and rrset.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.CNAME)
        elif rdtype == dns.rdatatype.DNAME:
            wanted = any(name.is_subdomain(rrset.name) and name != rrset.name for name in names)
        else:
            wanted = wire_key(rrset.name) in keys and (
                rdtype in (qtype, dns.rdatatype.CNAME) or qtype == dns.rdatatype.ANY
            )
        if wanted:
            kept.append(rrset)
    return kept


def referral_ds(response: dns.message.Message, child: dns.name.Name) -> list[dns.rrset.RRset]:
    """The signed DS of ``child`` a referral carries (what the validator asks for next), or nothing."""
    # The types first: an owner compared as a Name is a Python loop over its labels (long NSEC3 hashes here).
    return [
        r
        for r in response.authority
        if (r.rdtype == dns.rdatatype.DS or (r.rdtype == dns.rdatatype.RRSIG and r.covers == dns.rdatatype.DS))
        and r.name == child
    ]


def cname_target(
    response: dns.message.Message, sname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.name.Name | None:
    """Where the answer's CNAME chain from ``sname`` ends without data of ``rdtype``, or None."""
    # Owners compared by wire keys (in C), not as Names (a Python loop over their labels per comparison).
    owners = [(wire_key(r.name), r) for r in response.answer]
    start = current = wire_key(sname)
    target = sname
    for _ in range(len(owners) + 1):
        if any(r.rdtype == rdtype and owner == current for owner, r in owners):
            return None
        cname = next((r for owner, r in owners if r.rdtype == dns.rdatatype.CNAME and owner == current), None)
        if cname is None:
            return target if current != start else None
        rdata = cname[0]
        assert isinstance(rdata, CNAME)
        target = rdata.target
        current = wire_key(target)
    return None
