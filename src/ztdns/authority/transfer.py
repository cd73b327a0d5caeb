"""Zone transfer out (AXFR; IXFR from a journal of differences between transferred versions, RFC 1995) and
NOTIFY (RFC 1996), sans-IO.

A transfer is a generator of wire messages, each packed up to ~64 KB by the size of its records (RFC 5936 §2.2:
the unit is the RR, so an RRset larger than one message is split across messages), made only as the transport
asks for the next one: the first message of a 50,000-name zone leaves after one message's worth of signing.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig

from ztdns.authority.answer import SignedView
from ztdns.authority.zone import SOA, Zone, rrset_of

# Bytes of records per transfer message, uncompressed (compression only shrinks them): 64 KiB less room for
# the header, the question and a TSIG record. The first messages are smaller, so the first byte leaves after
# a few signatures rather than a whole message's worth.
MESSAGE_BUDGET = 65535 - 1024
FIRST_MESSAGE_BUDGET = 2048
_RR_FIXED = 10  # type, class, TTL, RDLENGTH


@dataclass(frozen=True, slots=True)
class TransferAcl:
    """Who may transfer a zone: holders of a listed TSIG key, or clients in a listed network."""

    keys: frozenset[dns.name.Name] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def allows(self, query: dns.message.Message, address: str) -> bool:
        if query.had_tsig and query.keyname in self.keys:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def zone_records(
    zone: Zone, view: SignedView | None, nsec3: Iterable[dns.rrset.RRset] = ()
) -> Iterator[dns.rrset.RRset]:
    """Every RRset of the zone with its signatures, SOA first (the closing SOA is added by the caller)."""
    return (rrset for rrset, _ in records_with_sources(zone, view, nsec3))


def records_with_sources(
    zone: Zone, view: SignedView | None, nsec3: Iterable[dns.rrset.RRset] = ()
) -> Iterator[tuple[dns.rrset.RRset, object]]:
    """``zone_records`` with, for each RRset, the object it was made from (the zone's rdataset, the signer's
    RRSIG RRset, the chain's NSEC3 RRset): versions share those objects where nothing changed, so comparing them
    by identity finds the differences between two versions without comparing records."""
    # In zone order but unsorted (a sort of 50,000 names would delay the first message): only the SOA's place
    # matters (RFC 5936 §2.2).
    apex_soa = zone.nodes[zone.origin][SOA]
    data = (
        (rrset_of(name, rds), rds)
        for name, node in zone.nodes.items()
        for rdtype, rds in node.items()
        if rdtype != SOA or name != zone.origin
    )
    for rrset, source in itertools.chain(((zone.soa_rrset(), apex_soa),), data, ((r, r) for r in nsec3)):
        yield rrset, source
        if view is None or unsigned_in_transfer(zone, rrset):
            continue
        sig = view.signatures.rrsig(rrset)
        if sig is not None:
            yield sig, sig


def unsigned_in_transfer(zone: Zone, rrset: dns.rrset.RRset) -> bool:
    # Delegation NS RRsets and glue below a cut are not authoritative data, so they carry no signature.
    if rrset.name == zone.origin:
        return False
    if rrset.name in zone.cuts and rrset.rdtype != dns.rdatatype.DS:
        return True
    return zone.cut_above(rrset.name, include_self=False) is not None


def axfr_messages(
    query: dns.message.Message, records: Iterable[dns.rrset.RRset], soa: dns.rrset.RRset
) -> Iterator[bytes]:
    """The transfer as wire messages, made one at a time (TSIG-signed in sequence when the query was, RFC 8945
    §5.3.1)."""
    tsig_ctx = None
    first = True
    for chunk in _packed(_chain(records, soa)):
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not first:
            response.question = []
        # Appended, not merged: the SOA opens and closes the transfer and the order must stay.
        response.answer.extend(chunk)
        wire = response.to_wire(max_size=65535, multi=True, tsig_ctx=tsig_ctx)
        tsig_ctx = response.tsig_ctx
        first = False
        yield wire


def _chain(records: Iterable[dns.rrset.RRset], soa: dns.rrset.RRset) -> Iterator[dns.rrset.RRset]:
    yield from records
    yield soa


def _packed(rrsets: Iterable[dns.rrset.RRset]) -> Iterator[list[dns.rrset.RRset]]:
    """The RRsets in groups of at most MESSAGE_BUDGET bytes; an RRset that does not fit in what is left of a
    message is split by record."""
    chunk: list[dns.rrset.RRset] = []
    used = 0
    budget = FIRST_MESSAGE_BUDGET
    for rrset in rrsets:
        owner = sum(map(len, rrset.name.labels)) + len(rrset.name.labels)
        sizes = [owner + _RR_FIXED + len(rdata.to_wire() or b"") for rdata in rrset]
        total = sum(sizes)
        if used + total <= budget:
            chunk.append(rrset)
            used += total
            continue
        if total <= MESSAGE_BUDGET and chunk:  # whole in the next message
            yield chunk
            chunk, used, budget = [rrset], total, min(budget * 4, MESSAGE_BUDGET)
            continue
        budget = MESSAGE_BUDGET
        part = _like(rrset)
        for rdata, size in zip(rrset, sizes, strict=True):
            if used + size > budget and (chunk or len(part)):
                if len(part):
                    chunk.append(part)
                yield chunk
                chunk, used, part = [], 0, _like(rrset)
            part.add(rdata)
            used += size
        if len(part):
            chunk.append(part)
    if chunk:
        yield chunk


def _like(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    part = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
    part.update_ttl(rrset.ttl)
    return part


Snapshot = dict[tuple[dns.name.Name, int, int], tuple[object, dns.rrset.RRset]]


def snapshot(records: Iterable[tuple[dns.rrset.RRset, object]]) -> Snapshot:
    """What a secondary holds after a transfer, keyed by (owner, type, covered type)."""
    return {(rrset.name, rrset.rdtype, rrset.covers): (source, rrset) for rrset, source in records}


def differences(old: Snapshot, new: Snapshot) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
    """(deleted, added) RRsets from ``old`` to ``new`` (RFC 1995), the SOA left out: it frames the sequence."""
    return _missing(old, new), _missing(new, old)


def _missing(have: Snapshot, other: Snapshot) -> list[dns.rrset.RRset]:
    """RRsets of ``have`` that ``other`` lacks or holds with other records or TTL (SOA left out)."""
    out = []
    for key, (source, rrset) in have.items():
        if key[1] == SOA:
            continue
        found = other.get(key)
        if found is None or (found[0] is not source and (found[1] != rrset or found[1].ttl != rrset.ttl)):
            out.append(rrset)
    return out


def notify_message(
    zone: Zone, keyring: dict[dns.name.Name, dns.tsig.Key] | None = None, keyname: dns.name.Name | None = None
) -> dns.message.Message:
    message = dns.message.make_query(zone.origin, dns.rdatatype.SOA)
    # The opcode lives in the flags word: set AA first, then the opcode.
    message.flags = dns.flags.AA
    message.set_opcode(dns.opcode.NOTIFY)
    message.answer.append(zone.soa_rrset())
    if keyring is not None and keyname is not None:
        message.use_tsig(keyring, keyname)
    return message
