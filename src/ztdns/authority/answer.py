"""Authoritative answering, sans-IO: one query message and one zone version in, one response message out.

Follows RFC 1034 §4.3.2 (with RFC 6672-free simplifications: no DNAME), RFC 4592 wildcards including empty
non-terminals, RFC 2308 negative answers and, when the zone is signed and the query sets DO, RFC 4035 §3.1
signatures and denial proofs supplied by a :class:`Denial` (NSEC3 or compact denial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset

from ztdns.authority.zone import CNAME, DS, NS, Zone, rrset_of

WILDCARD = b"*"
# Longest CNAME chain followed inside one zone; longer chains (or loops) are answered as far as this.
MAX_CHAIN = 8
GLUE_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


# The EDNS header flag "Compact Answers OK" (RFC 9824 §4), next to DO.
EDNS_CO = 0x4000


class Signatures(Protocol):
    """Makes (or finds cached) RRSIGs for zone RRsets."""

    def rrsig(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset | None:
        """The RRSIG RRset covering ``rrset``, owned by ``rrset.name``."""


class Denial(Protocol):
    """Proofs of non-existence for one signed zone version (NSEC3 chain or compact denial)."""

    def nxdomain(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> tuple[int, list[dns.rrset.RRset]]:
        """Rcode and records proving ``qname`` does not exist (compact denial answers NOERROR)."""

    def nodata(self, zone: Zone, qname: dns.name.Name) -> list[dns.rrset.RRset]:
        """Records proving ``qname`` exists without the asked type (also used for DS at an unsigned cut)."""

    def wildcard_nodata(self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name) -> list[dns.rrset.RRset]: ...

    def wildcard_answer(
        self, zone: Zone, qname: dns.name.Name, encloser: dns.name.Name
    ) -> list[dns.rrset.RRset] | None:
        """Proof that ``qname`` itself does not exist, or None to sign the synthesised RRset as ``qname``."""


@dataclass(frozen=True, slots=True)
class SignedView:
    """What a signed zone adds to answering."""

    signatures: Signatures
    denial: Denial


@dataclass(slots=True)
class _Sections:
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    rcode: int = dns.rcode.NOERROR
    authoritative: bool = True


class _Lookup:
    """One query's walk through one zone; fills ``_Sections`` (signatures are added afterwards)."""

    def __init__(self, zone: Zone, view: SignedView | None) -> None:
        self.zone = zone
        self.view = view
        self.out = _Sections()
        # Answer RRsets whose signature must be made for another owner name (wildcard synthesis): id → RRSIG.
        self.presigned: dict[int, dns.rrset.RRset | None] = {}
        # A non-existent name answered NOERROR by compact denial (RFC 9824): NXDOMAIN when the client sent CO.
        self.compact_nxdomain = False

    def run(self, qname: dns.name.Name, qtype: int) -> _Sections:
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CHAIN + 1):
            seen.add(qname)
            target = self._step(qname, qtype)
            if target is None or target in seen or not target.is_subdomain(self.zone.origin):
                break
            qname = target
        return self.out

    def _step(self, qname: dns.name.Name, qtype: int) -> dns.name.Name | None:
        """Answer ``qname``; returns the CNAME target to continue with, if any."""
        zone = self.zone
        cut = zone.cut_above(qname, include_self=qtype != DS)
        if cut is not None:
            self._referral(cut)
            return None
        if qname in zone.existing:
            node = zone.nodes.get(qname, {})
            found = self._pick(node, qtype)
            if found:
                self.out.answer.extend(rrset_of(qname, rds) for rds in found)
                return None
            if CNAME in node:
                self.out.answer.append(rrset_of(qname, node[CNAME]))
                target: dns.name.Name = node[CNAME][0].target
                return target
            self._negative(self.view.denial.nodata(zone, qname) if self.view else [])
            return None
        encloser = qname.parent()
        while encloser not in zone.existing:
            encloser = encloser.parent()
        source = dns.name.Name((WILDCARD, *encloser.labels))
        if source not in zone.existing:
            rcode: int = dns.rcode.NXDOMAIN
            denial: list[dns.rrset.RRset] = []
            if self.view is not None:
                rcode, denial = self.view.denial.nxdomain(zone, qname, encloser)
                self.compact_nxdomain = rcode != dns.rcode.NXDOMAIN
            self._negative(denial)
            self.out.rcode = rcode
            return None
        node = zone.nodes.get(source, {})
        found = self._pick(node, qtype) or ([node[CNAME]] if CNAME in node else [])
        if not found:
            self._negative(self.view.denial.wildcard_nodata(zone, qname, encloser) if self.view else [])
            return None
        proof: list[dns.rrset.RRset] | None = None
        if self.view is not None:
            proof = self.view.denial.wildcard_answer(zone, qname, encloser)
        for rds in found:
            synthesised = rrset_of(qname, rds)
            if self.view is not None and proof is not None:
                # RFC 4035 §5.3.4: the signature is the wildcard's, with fewer labels than the owner.
                sig = self.view.signatures.rrsig(rrset_of(source, rds))
                if sig is not None:
                    sig = rrset_of(qname, sig)
                self.presigned[id(synthesised)] = sig
            self.out.answer.append(synthesised)
        if proof:
            self.out.authority.extend(proof)
        if found[0].rdtype == CNAME and qtype not in (CNAME, dns.rdatatype.ANY):
            cname_target: dns.name.Name = found[0][0].target
            return cname_target
        return None

    @staticmethod
    def _pick(node: dict[int, dns.rdataset.Rdataset], qtype: int) -> list[dns.rdataset.Rdataset]:
        if qtype == dns.rdatatype.ANY:
            # RFC 8482: answer ANY with one RRset rather than everything (no amplification).
            return [node[min(node)]] if node else []
        rds = node.get(qtype)
        return [rds] if rds is not None else []

    def _negative(self, proof: list[dns.rrset.RRset]) -> None:
        self.out.authority.append(self.zone.negative_soa())
        self.out.authority.extend(proof)

    def _referral(self, cut: dns.name.Name) -> None:
        zone = self.zone
        ns = zone.nodes[cut][NS]
        if not self.out.answer:
            self.out.authoritative = False
        self.out.authority.append(rrset_of(cut, ns))
        if self.view is not None:
            ds = zone.get(cut, DS)
            if ds is not None:
                self.out.authority.append(rrset_of(cut, ds))
            else:
                self.out.authority.extend(self.view.denial.nodata(zone, cut))
        # Glue: only addresses we hold for in-bailiwick name servers (RFC 9471 requires these; others are not
        # ours).
        for rdata in ns:
            target = rdata.target
            if not target.is_subdomain(zone.origin):
                continue
            for rdtype in GLUE_TYPES:
                glue = zone.get(target, rdtype)
                if glue is not None:
                    self.out.additional.append(rrset_of(target, glue))


def answer(query: dns.message.Message, zone: Zone | None, view: SignedView | None = None) -> dns.message.Message:
    """The authoritative response to ``query`` from ``zone`` (None: not ours → REFUSED)."""
    response = dns.message.make_response(query, our_payload=1232)
    response.flags |= query.flags & dns.flags.CD
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        return response
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    if zone is None or question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    qname, qtype = question.name, question.rdtype
    if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
        response.set_rcode(dns.rcode.NOTIMP if qtype != dns.rdatatype.OPT else dns.rcode.FORMERR)
        return response
    wants_dnssec = bool(query.ednsflags & dns.flags.DO)
    dnssec = view is not None and wants_dnssec
    if wants_dnssec:
        response.want_dnssec(True)
    lookup = _Lookup(zone, view if dnssec else None)
    out = lookup.run(qname, qtype)
    if out.authoritative:
        response.flags |= dns.flags.AA
    rcode = out.rcode
    if dnssec and query.ednsflags & EDNS_CO:
        # RFC 9824 §4: a client that sets CO ("compact answers OK") gets NXDOMAIN for a non-existent name, the
        # compact proof unchanged; CO is echoed.
        response.ednsflags |= EDNS_CO
        if lookup.compact_nxdomain and not out.answer:
            rcode = dns.rcode.NXDOMAIN
    response.set_rcode(dns.rcode.Rcode.make(rcode))
    if dnssec and view is not None:
        response.answer = _with_signatures(out.answer, view.signatures, lookup.presigned)
        referral_ns = [r for r in out.authority if r.rdtype == NS and r.name != zone.origin]
        response.authority = _with_signatures(out.authority, view.signatures, {id(r): None for r in referral_ns})
    else:
        response.answer = list(out.answer)
        response.authority = list(out.authority)
    response.additional = list(out.additional)
    return response


def _with_signatures(
    rrsets: list[dns.rrset.RRset], signatures: Signatures, presigned: dict[int, dns.rrset.RRset | None]
) -> list[dns.rrset.RRset]:
    """Each RRset followed by its RRSIG RRset; ``presigned`` overrides (None: leave unsigned, e.g. cut NS)."""
    signed: list[dns.rrset.RRset] = []
    for rrset in rrsets:
        signed.append(rrset)
        sig = presigned[id(rrset)] if id(rrset) in presigned else signatures.rrsig(rrset)
        if sig is not None:
            signed.append(sig)
    return signed
