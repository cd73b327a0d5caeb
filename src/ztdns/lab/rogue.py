"""Misbehaving authoritative servers for one unsigned zone, for what Knot DNS cannot be told to do:
answer slowly (``slow.lab.``), or stuff out-of-bailiwick records into its referrals (``poison.lab.``).

Run as ``python -m ztdns.lab.rogue ZONEFILE ORIGIN ADDRESS PORT DELAY [POISONFILE]``: answers UDP after DELAY
seconds; with POISONFILE (records in zone format, absolute names), every referral also carries those records
— NS records in the authority section, everything else in the additional section — as a cache-poisoning
authority would.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone


def _delegation(zone: dns.zone.Zone, name: dns.name.Name) -> dns.name.Name | None:
    """The highest zone cut at or above ``name`` inside ``zone`` (a node below the apex with NS)."""
    origin = zone.origin
    assert origin is not None
    depth = len(origin)
    while depth < len(name):
        depth += 1
        cut = dns.name.Name(name.labels[-depth:])
        node = zone.get_node(cut)
        if node is not None and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is not None:
            return cut
    return None


def answer(zone: dns.zone.Zone, wire: bytes, poison: list[dns.rrset.RRset] | None = None) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0] if query.question else None
    origin = zone.origin
    assert origin is not None
    if question is None or not question.name.is_subdomain(origin):
        response.set_rcode(dns.rcode.REFUSED)
        response.flags &= ~dns.flags.AA
        return response.to_wire()
    cut = _delegation(zone, question.name)
    if cut is not None:
        response.flags &= ~dns.flags.AA
        ns = zone.find_rrset(cut, dns.rdatatype.NS)
        response.authority.append(ns)
        for rdata in ns:
            glue = zone.get_rrset(rdata.target, dns.rdatatype.A)
            if glue is not None:
                response.additional.append(glue)
        for rrset in poison or []:
            section = response.authority if rrset.rdtype == dns.rdatatype.NS else response.additional
            section.append(rrset)
        return response.to_wire()
    node = zone.get_node(question.name)
    rdataset = node.get_rdataset(question.rdclass, question.rdtype) if node is not None else None
    if rdataset is not None:
        response.answer.append(dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset)))
    else:
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = zone.find_rrset(origin, dns.rdatatype.SOA)
        response.authority.append(soa)
    return response.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, zone: dns.zone.Zone, delay: float, poison: list[dns.rrset.RRset]) -> None:
        self.zone = zone
        self.delay = delay
        self.poison = poison
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(self.zone, data, self.poison)
        if reply is not None and self.transport is not None:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, reply, addr)


def load_poison(path: str) -> list[dns.rrset.RRset]:
    with open(path) as handle:
        zone = dns.zone.from_text(handle.read(), dns.name.root, relativize=False, check_origin=False)
    return [
        dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)) for name, rdataset in zone.iterate_rdatasets()
    ]


async def serve(zone_file: str, origin: str, address: str, port: int, delay: float, poison_file: str | None) -> None:
    zone = dns.zone.from_file(zone_file, origin, relativize=False)
    poison = load_poison(poison_file) if poison_file else []
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Protocol(zone, delay, poison), local_addr=(address, port))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    file, name, host, port_text, delay_text = sys.argv[1:6]
    asyncio.run(serve(file, name, host, int(port_text), float(delay_text), sys.argv[6] if len(sys.argv) > 6 else None))
