"""A deliberately slow authoritative server for one unsigned zone (Knot cannot be told to dawdle).

Run as ``python -m ztdns.lab.slow ZONEFILE ORIGIN ADDRESS PORT DELAY``; answers UDP after DELAY seconds.
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
import dns.rdatatype
import dns.rrset
import dns.zone


def answer(zone: dns.zone.Zone, wire: bytes) -> bytes | None:
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
    def __init__(self, zone: dns.zone.Zone, delay: float) -> None:
        self.zone = zone
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(self.zone, data)
        if reply is not None and self.transport is not None:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, reply, addr)


async def serve(zone_file: str, origin: str, address: str, port: int, delay: float) -> None:
    zone = dns.zone.from_file(zone_file, origin, relativize=False)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Protocol(zone, delay), local_addr=(address, port))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    file, name, host, port_text, delay_text = sys.argv[1:6]
    asyncio.run(serve(file, name, host, int(port_text), float(delay_text)))
