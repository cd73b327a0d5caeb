"""The hot path alone: microseconds per replayed answer in ``Frontend.fast`` and
``Frontend.fast_batch``, in-process, no sockets.

    .venv/bin/python bench/fastpath.py [--queries 200000] [--query-log /tmp/bench-querylog.json]

Three cases: the query's bytes seen before (found by its bytes after the ID, no parsing), one at a time
(``fast``: TCP, DoT, DoH, the pure-Python UDP lane) and in batches of 64 from 4 clients as the batched UDP lane
hands them over (``fast_batch``); and 64 spellings of the same question in mixed case as a 0x20-randomising
resolver sends them (each parsed by hand once, found by its normal form, then by its own bytes; the client's
spelling is spliced in). Prints µs per query for each; compare with bench/do53.py for what the sockets add.
Run it on an idle machine: it measures one core.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import dns.message

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend

CONFIG = """
[resolver]
mode = "none"

[identities.bench]
networks = ["127.0.0.0/8"]
policies = ["bench"]

[policies.bench]
allow = ["**.bench.test"]

[[local_zones]]
name = "bench.test"
records = ["bench.test. 3600 IN SOA ns.bench.test. h.bench.test. 1 3600 600 86400 300",
           "www.bench.test. 300 IN A 192.0.2.1"]

[log.query_log]
output = "{query_log}"
"""


def per_query_batched(frontend: Frontend, wire: bytes, count: int) -> float:
    """µs per query through ``fast_batch`` as the UDP lane calls it: batches of 64 from 4 clients."""
    peers = {b"%d" % i: ClientInfo(Transport.UDP, "127.0.0.1", 5353 + i) for i in range(4)}
    batch = [(wire, b"%d" % (i % 4)) for i in range(64)]
    fast_batch, client_of = frontend.fast_batch, peers.__getitem__
    rounds = count // len(batch)
    started = time.perf_counter()
    for _ in range(rounds):
        answers: list[tuple[bytes, bytes]] = []
        if fast_batch(batch, client_of, answers):
            raise RuntimeError("not replayed")
    return (time.perf_counter() - started) / (rounds * len(batch)) * 1e6


def per_query(frontend: Frontend, wires: list[bytes], client: ClientInfo, count: int) -> float:
    fast = frontend.fast
    rounds = count // len(wires)
    started = time.perf_counter()
    for _ in range(rounds):
        for wire in wires:
            if fast(wire, client) is None:
                raise RuntimeError("not replayed")
    return (time.perf_counter() - started) / (rounds * len(wires)) * 1e6


async def main(count: int, query_log: str) -> None:
    frontend = Frontend(parse_config(CONFIG.format(query_log=query_log), "bench", Path(".")))
    client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
    plain = dns.message.make_query("www.bench.test", "A", use_edns=0).to_wire()
    await frontend.handle(plain, client)
    await asyncio.sleep(0)  # the replay is stored after the answer is sent, in the next loop turn
    print(f"exact bytes seen before: {per_query(frontend, [plain], client, count):.2f} µs/query")
    print(f"the same, UDP lane batches: {per_query_batched(frontend, plain, count):.2f} µs/query")
    # 64 spellings: each is parsed once, then found by its own bytes too; a fresh set per round would only
    # measure the parser, so the mix below is what a 0x20-randomising resolver in front of us looks like.
    spellings = []
    for i in range(64):
        name = "".join(c.upper() if (i >> (n % 6)) & 1 else c for n, c in enumerate("www.bench.test"))
        spellings.append(dns.message.make_query(name, "A", use_edns=0).to_wire())
    print(f"64 case spellings:        {per_query(frontend, spellings, client, count):.2f} µs/query")
    await frontend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--query-log", default="off", help='log.query_log.output: "off" (default) or a file')
    args = parser.parse_args()
    asyncio.run(main(args.queries, args.query_log))
