"""The stages around the resolver alone: µs of CPU per query in ``Frontend.handle``, in-process, no sockets.

    .venv/bin/python bench/stages.py [--queries 20000] [--rounds 5]

Every query asks a new name (no replay, no cache hit), so each runs the whole pipeline — guard, identify, policy,
chain check, cache store, respond, observe and the replay registration after the answer — around a resolver that
answers at once with a signed A record (what a cold recursive query costs beyond the recursion itself). Prints
the minimum and median over rounds. Run it on an idle machine: it measures one core.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution

CONFIG = """
[resolver]
mode = "recursive"

[identities.bench]
networks = ["127.0.0.0/8"]
policies = ["bench"]

[policies.bench]
allow = ["**"]

[log.query_log]
output = "off"
"""

_SIGNATURE = "A 13 3 300 20300101000000 20200101000000 12345 bench.test. " + "AAAA" * 16


def signed_answer(name: dns.name.Name) -> list[dns.rrset.RRset]:
    return [
        dns.rrset.from_text(name, 300, dns.rdataclass.IN, dns.rdatatype.A, "192.0.2.1"),
        dns.rrset.from_text(name, 300, dns.rdataclass.IN, dns.rdatatype.RRSIG, _SIGNATURE),
    ]


class AnsweringResolver:
    """Answers every question with a signed A record, validated (AD), as a resolver's cold answer looks; the
    records are made before the clock starts (``answers``), the message per query, as a resolver does."""

    def __init__(self) -> None:
        self.answers: dict[dns.name.Name, list[dns.rrset.RRset]] = {}

    async def resolve(self, question: Question) -> Resolution:
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA | dns.flags.AD
        response.answer = self.answers[question.name]
        return Resolution(response, security="secure")

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


async def one_round(names: list[dns.name.Name], wires: list[bytes], client: ClientInfo) -> float:
    """CPU seconds per query over ``wires`` (asking ``names``), in a fresh Frontend (cold cache, no replays)."""
    resolver = AnsweringResolver()
    resolver.answers = {name: signed_answer(name) for name in names}
    frontend = Frontend(parse_config(CONFIG, "bench", Path(".")), resolver_factory=lambda config: resolver)
    frontend.bind_loop(asyncio.get_running_loop())
    spent = 0.0
    for wire in wires:
        started = time.thread_time()
        if await frontend.handle(wire, client) is None:
            raise RuntimeError("no answer")
        await asyncio.sleep(0)  # the replay registration runs after the answer is sent: count it too
        spent += time.thread_time() - started
    await frontend.close()
    return spent / len(wires)


async def main(count: int, rounds: int) -> None:
    client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
    names = [dns.name.from_text(f"host{i}.bench.test") for i in range(count)]
    wires = [dns.message.make_query(name, "A", want_dnssec=True).to_wire() for name in names]
    # As in the server: no collections in the middle of the measured work.
    gc.collect()
    gc.freeze()
    gc.disable()
    results = []
    for _ in range(rounds):
        results.append(await one_round(names, wires, client))
        gc.collect()
    print(f"per query: min {min(results) * 1e6:.1f} µs, median {statistics.median(results) * 1e6:.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.queries, arguments.rounds))
