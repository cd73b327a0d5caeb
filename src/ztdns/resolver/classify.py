"""Recursion's view of one authoritative response: what a server for the zone may say (scrubbing out of
bailiwick records, undoing 0x20 in owner names) and what the response is (answer, CNAME, referral, NXDOMAIN,
NODATA, lame). Sans-IO.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS

from ztdns.resolver.delegation import Delegation


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
            lowered = tuple(map(bytes.lower, labels))
            if lowered[-depth:] != suffix:
                continue
            if lowered != labels:  # most owner names are lower-case already: no new Name for those
                rrset.name = dns.name.Name(lowered)
            kept.append(rrset)
        section[:] = kept
    return response


def referral(response: dns.message.Message, zone: dns.name.Name, qname: dns.name.Name, now: float) -> Delegation | None:
    """A downward referral from ``zone`` toward ``qname``, keeping only in-bailiwick glue."""
    if response.answer or response.rcode() != dns.rcode.NOERROR or response.flags & dns.flags.AA:
        return None
    ns_sets = [r for r in response.authority if r.rdtype == dns.rdatatype.NS]
    if not ns_sets:
        return None
    ns_set = ns_sets[0]
    child = ns_set.name
    if not (child.is_subdomain(zone) and child != zone and qname.is_subdomain(child)):
        raise Lame(f"referral from {zone} to {child} is not downward toward {qname}")
    names = [rdata.target for rdata in ns_set if isinstance(rdata, NS)]
    addresses: list[str] = []
    for rrset in response.additional:
        # Glue only for name servers inside the referring zone (out-of-zone glue is never trusted).
        if (
            rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            and rrset.name in names
            and rrset.name.is_subdomain(zone)
        ):
            addresses.extend(rdata.address for rdata in rrset)
    # The zone as scrub spells owner names (servers echo our 0x20 case into them).
    return Delegation(child.canonicalize(), names, addresses, now + min(ns_set.ttl, 86_400))


def referral_ds(response: dns.message.Message, child: dns.name.Name) -> list[dns.rrset.RRset]:
    """The signed DS of ``child`` a referral carries (what the validator asks for next), or nothing."""
    return [
        r
        for r in response.authority
        if r.name == child
        and (r.rdtype == dns.rdatatype.DS or (r.rdtype == dns.rdatatype.RRSIG and r.covers == dns.rdatatype.DS))
    ]


def cname_target(
    response: dns.message.Message, sname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.name.Name | None:
    """Where the answer's CNAME chain from ``sname`` ends without data of ``rdtype``, or None."""
    current = sname
    for _ in range(len(response.answer) + 1):
        if any(r.name == current and r.rdtype == rdtype for r in response.answer):
            return None
        cname = next((r for r in response.answer if r.name == current and r.rdtype == dns.rdatatype.CNAME), None)
        if cname is None:
            return current if current != sname else None
        rdata = cname[0]
        assert isinstance(rdata, CNAME)
        current = rdata.target
    return None
