"""Zone transfer out (AXFR; IXFR is answered with a full transfer, RFC 1995 §4) and NOTIFY (RFC 1996),
sans-IO."""

from __future__ import annotations

import ipaddress
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
from ztdns.authority.zone import SOA, Zone

# Records per transfer message: keeps each message well under 64 KiB even with large signed RRsets.
RECORDS_PER_MESSAGE = 200


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
    soa = zone.soa_rrset()
    ordered = [soa, *(r for r in zone.rrsets() if r.rdtype != SOA or r.name != zone.origin), *nsec3]
    for rrset in ordered:
        yield rrset
        if view is None or _unsigned_in_transfer(zone, rrset):
            continue
        sig = view.signatures.rrsig(rrset)
        if sig is not None:
            yield sig


def _unsigned_in_transfer(zone: Zone, rrset: dns.rrset.RRset) -> bool:
    # Delegation NS RRsets and glue below a cut are not authoritative data, so they carry no signature.
    if rrset.name == zone.origin:
        return False
    if rrset.name in zone.cuts and rrset.rdtype != dns.rdatatype.DS:
        return True
    return zone.cut_above(rrset.name, include_self=False) is not None


def axfr_messages(query: dns.message.Message, records: Iterable[dns.rrset.RRset], soa: dns.rrset.RRset) -> list[bytes]:
    """The transfer as wire messages (TSIG-signed in sequence when the query was, RFC 8945 §5.3.1)."""
    rrs = [*records, soa]
    wires: list[bytes] = []
    tsig_ctx = None
    for start in range(0, len(rrs), RECORDS_PER_MESSAGE):
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if start:
            response.question = []
        for rrset in rrs[start : start + RECORDS_PER_MESSAGE]:
            # Appended, not merged: the SOA opens and closes the transfer and the order must stay.
            response.answer.append(rrset)
        multi = len(rrs) > RECORDS_PER_MESSAGE
        wires.append(response.to_wire(max_size=65535, multi=multi, tsig_ctx=tsig_ctx))
        tsig_ctx = response.tsig_ctx
    return wires


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
