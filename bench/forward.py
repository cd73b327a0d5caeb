"""Forwarding throughput: ztdns's Forwarder against dnspython's own async UDP query, both through one Unbound.

Both sides do the same work per question — a fresh UDP socket, a random ID, wait for the matching reply — so the
ratio shows what reply validation, health tracking and the Resolution wrapper cost on top of a bare exchange.
Rounds alternate between the two so machine noise hits both alike.

    .venv/bin/python bench/forward.py [--seconds 5] [--rounds 2] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.unbound import UnboundServer
from ztdns.config.resolver import ResolverConfig, UpstreamConfig
from ztdns.model import Question
from ztdns.resolver.forward import Forwarder

NAME = "www.bench.test."


async def measure(one: Callable[[], Awaitable[bool]], seconds: float, concurrency: int) -> tuple[float, int]:
    """Answers per second from ``concurrency`` workers calling ``one`` back to back, and how many got none
    (Unbound drops datagrams when the machine is busy; a lost query costs both sides a timeout)."""
    answered = failed = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal answered, failed
        while time.monotonic() < stop:
            if await one():
                answered += 1
            else:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered / (time.monotonic() - started), failed


async def bench(address: str, seconds: float, rounds: int, concurrency: int) -> None:
    forwarder = Forwarder(ResolverConfig(upstreams=[UpstreamConfig(address=address)]))
    question = Question(dns.name.from_text(NAME), dns.rdatatype.A, dns.rdataclass.IN)
    host, port = UpstreamConfig(address=address).hostport()

    async def ztdns_one() -> bool:
        return (await forwarder.resolve(question)).response is not None

    async def dnspython_one() -> bool:
        query = dns.message.make_query(NAME, "A", use_edns=0, payload=1232)
        try:
            await dns.asyncquery.udp(query, host, port=port, timeout=1.5)
        except dns.exception.Timeout:
            return False
        return True

    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    for _ in range(rounds):
        ours.append(await measure(ztdns_one, seconds, concurrency))
        theirs.append(await measure(dnspython_one, seconds, concurrency))
    await forwarder.close()
    for label, results in (("ztdns Forwarder     ", ours), ("dnspython asyncquery", theirs)):
        rounds_text = ", ".join(f"{rate:.0f}" for rate, _ in results)
        failed = sum(f for _, f in results)
        print(f"{label}: {max(results)[0]:8.0f} q/s best  (rounds: {rounds_text}; unanswered: {failed})")
    print(f"ratio ztdns/dnspython: {max(ours)[0] / max(theirs)[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured round per side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = UnboundServer.start(Path(directory), [f"{NAME} 300 IN A 192.0.2.1"], zones=["bench.test."])
        try:
            uvloop.run(bench(server.address, args.seconds, args.rounds, args.concurrency))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
