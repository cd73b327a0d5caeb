"""Recursion benchmark against the lab: ztdns (recursive, validating) vs Unbound (validating, same anchor).

Both run inside the lab's network namespace. ztdns's RecursiveResolver sits behind a minimal UDP adapter in
this process (the lead's server is not in this tree), so the ztdns figures include Python message parsing
but not the full pipeline. Cold: mean latency of each lab case on a fresh resolver. Warm: dnsperf qps over
the cases that resolve, after one priming pass.

    python bench/recursion.py [--seconds 10] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from ztdns.config.model import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab
from ztdns.lab.unbound import Unbound
from ztdns.lab.zones import CASES
from ztdns.resolver import Question
from ztdns.resolver.recursive import RecursiveResolver

ZTDNS, UNBOUND = "127.0.0.2", "127.0.0.1"


def make_resolver(lab: Lab) -> RecursiveResolver:
    resolver = RecursiveResolver(RecursionConfig(root_hints=str(lab.root_hints), allow_query_localhost=True))
    resolver.validator = Validator(resolver, TrustAnchors.load(texts=(), files=[lab.trust_anchor]))
    return resolver


class Front(asyncio.DatagramProtocol):
    """Bench-only Do53 adapter: wire in, RecursiveResolver, wire out."""

    def __init__(self, resolver: RecursiveResolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self.answer(data, addr))

    async def answer(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        dnssec_ok = query.ednsflags & dns.flags.DO != 0
        resolution = await self.resolver.resolve(
            Question(question.name, question.rdtype, question.rdclass, dnssec_ok, bool(query.flags & dns.flags.CD))
        )
        response = dns.message.make_response(query)
        if resolution.response is None:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            response.set_rcode(resolution.response.rcode())
            response.flags |= resolution.response.flags & dns.flags.AD
            response.answer = resolution.response.answer
            response.authority = resolution.response.authority
        if self.transport is not None:
            self.transport.sendto(response.to_wire(), addr)


async def cold_latency(server: str) -> float:
    """Mean milliseconds per lab case on a cache that has seen nothing (queried in order)."""
    times = []
    for case in CASES:
        query = dns.message.make_query(case.qname, case.qtype, want_dnssec=True)
        start = time.perf_counter()
        await dns.asyncquery.udp(query, server, 10)
        times.append(time.perf_counter() - start)
    return statistics.mean(times) * 1000


def dnsperf(lab: Lab, server: str, query_file: Path, seconds: int, clients: int) -> tuple[float, float]:
    output = subprocess.run(
        [
            *netns.exec_prefix(lab.netns),
            "dnsperf",
            "-s",
            server,
            "-d",
            str(query_file),
            "-l",
            str(seconds),
            "-c",
            str(clients),
            "-q",
            str(clients * 4),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return qps, latency * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, Lab(Path(directory), netns_name="auto") as lab:
        query_file = Path(directory) / "queries.txt"
        query_file.write_text("".join(f"{c.qname} {c.qtype}\n" for c in CASES if c.rcode != "SERVFAIL"))
        with Unbound(lab, address=UNBOUND), NetnsLoop(lab.netns) as loop:
            resolver = make_resolver(lab)

            async def listen() -> None:
                await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: Front(resolver), local_addr=(ZTDNS, 53)
                )

            loop.run(listen())
            cold = {name: loop.run(cold_latency(address)) for name, address in (("ztdns", ZTDNS), ("unbound", UNBOUND))}
            warm = {
                name: dnsperf(lab, address, query_file, args.seconds, args.clients)
                for name, address in (("ztdns", ZTDNS), ("unbound", UNBOUND))
            }
    print(
        f"cold mean latency per lab case: ztdns {cold['ztdns']:.2f} ms, unbound {cold['unbound']:.2f} ms, "
        f"ratio {cold['ztdns'] / cold['unbound']:.2f}x (target <= 2)"
    )
    print(
        f"warm qps ({args.clients} clients, {args.seconds} s): ztdns {warm['ztdns'][0]:.0f} "
        f"({warm['ztdns'][1]:.2f} ms), unbound {warm['unbound'][0]:.0f} ({warm['unbound'][1]:.2f} ms), "
        f"ratio {warm['ztdns'][0] / warm['unbound'][0]:.2f} (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
