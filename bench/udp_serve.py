"""The batched UDP lane's serving thread per replayed answer: ``_udpbatch.serve`` (plain replays answered, logged
and sent in C) against the lane before it (``recv``, ``Frontend.fast_batch``, ``send``), in-process on loopback,
alternating rounds, at batches of a given size.

    .venv/bin/python bench/udp_serve.py [--batches 1,13,64] [--queries 20000] [--rounds 5] [--query-log FILE|off]
        [--only before|serve]

A real ``Frontend`` (1,000 names of a local zone, their replays stored, detection as by default: observing) with
the query log on by default (the JSON sink writing to a file, as the examples do). Each round queues a batch of
queries for 1,000 distinct names from one client socket in the server socket's buffer, then times (CPU of this
thread: ``time.thread_time``) one lane step taking it, answering and sending; the sink's thread formats on its
own and is not counted. Prints µs per query per batch size for each lane, and the difference. Compare with
bench/udp_lane.py (the system calls alone) and bench/do53.py (the whole server against dnsperf).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dns.message

from fastpath import CONFIG as FASTPATH_CONFIG
from udp_lane import loopback_pair
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.transport import _udpbatch
from ztdns.transport.udp import ANSWER_ROOM, MAX_QUERY, sockaddr_address

NAMES = 1000
# bench/fastpath.py's server with 1,000 names in its zone.
CONFIG = FASTPATH_CONFIG.replace('"www.bench.test. 300 IN A 192.0.2.1"]', "{records}]")

Step = Callable[[], int]
LABELS = {"before": "recv + fast_batch + send", "serve": "serve (C)"}


def lanes(frontend: Frontend, fd: int) -> dict[str, Step]:
    """One lane step each (receive what is queued, answer, send): the number of queries it took."""
    buffer, out = bytearray(_udpbatch.BATCH * MAX_QUERY), bytearray(_udpbatch.BATCH * ANSWER_ROOM)
    clients: dict[bytes, ClientInfo] = {}

    def client_of(name: bytes) -> ClientInfo:
        found = clients.get(name)
        if found is None:
            found = clients[name] = ClientInfo(Transport.UDP, *sockaddr_address(name)[:2])
        return found

    def before() -> int:
        batch = _udpbatch.recv(fd, buffer, MAX_QUERY)
        answers: list[tuple[bytes, bytes]] = []
        if frontend.fast_batch(batch, client_of, answers):
            raise RuntimeError("not replayed")
        _udpbatch.send(fd, answers)
        return len(batch)

    def serve() -> int:
        left, charged, counted, latency = _udpbatch.serve(fd, buffer, MAX_QUERY, out, frontend.plain_replays)
        if charged:
            frontend.replays_served(charged, counted, latency)
        if left:  # a sender's first datagram: fast_batch meets it (as the lane does)
            answers: list[tuple[bytes, bytes]] = []
            if frontend.fast_batch(left, client_of, answers):
                raise RuntimeError("not replayed")
            _udpbatch.send(fd, answers)
        return len(left) + sum(count for _, _, count in charged)

    return {"before": before, "serve": serve}


def user_time() -> float:
    """This thread's CPU time in user space (``time.thread_time`` adds the kernel's)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_utime


def drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return


async def main(sizes: list[int], queries: int, rounds: int, query_log: str, only: str | None) -> None:
    records = ",\n".join(f'"n{i}.bench.test. 300 IN A 192.0.2.{i % 250 + 1}"' for i in range(NAMES))
    frontend = Frontend(parse_config(CONFIG.format(records=records, query_log=query_log), "bench", Path(".")))
    wires = [dns.message.make_query(f"n{i}.bench.test", "A", use_edns=0).to_wire() for i in range(NAMES)]
    with loopback_pair() as (server, client):
        client.setblocking(False)
        peer = ClientInfo(Transport.UDP, *client.getsockname())
        for wire in wires:
            await frontend.handle(wire, peer)
            await asyncio.sleep(0)  # the replay is stored in the next loop turn
        steps = lanes(frontend, server.fileno())
        if only is not None:  # one lane alone, for perf stat or callgrind
            steps = {only: steps[only]}
        address = server.getsockname()
        results: dict[tuple[str, int], list[float]] = {}
        next_name = 0
        for _ in range(rounds):
            for size in sizes:
                for label, step in steps.items():
                    spent, user, answered = 0.0, 0.0, 0
                    while answered < queries:
                        for _ in range(size):
                            client.sendto(wires[next_name], address)
                            next_name = (next_name + 1) % NAMES
                        started, started_user = time.thread_time(), user_time()
                        taken = step()
                        spent += time.thread_time() - started
                        user += user_time() - started_user
                        answered += taken
                        if taken != size:
                            raise RuntimeError(f"a step took {taken} of {size} queries")
                        drain(client)
                    results.setdefault((label, size), []).append(spent / answered * 1e6)
                    results.setdefault((label + " user", size), []).append(user / answered * 1e6)
    await frontend.close()
    print(
        f"serving thread, µs CPU per query (median of {rounds} rounds; best), of it in user space (the kernel's "
        f"part is the same two system calls for both), query log: {query_log}"
    )
    for size in sizes:
        medians: dict[str, float] = {}
        for label in steps:
            values, in_user = results[(label, size)], results[(label + " user", size)]
            medians[label], medians[label + " user"] = statistics.median(values), statistics.median(in_user)
            print(
                f"  batch {size:3d}  {LABELS[label]:26s} {medians[label]:6.2f}  ({min(values):.2f})   "
                f"user {medians[label + ' user']:5.2f}  ({min(in_user):.2f})"
            )
        if len(medians) == 4:
            print(
                f"  batch {size:3d}  {'difference':26s} {medians['serve'] - medians['before']:+6.2f}"
                f"            user {medians['serve user'] - medians['before user']:+5.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,13,64", help="batch sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=20_000, help="queries per lane, batch size and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--query-log", default="", help='a file (default: a temporary one), or "off"')
    parser.add_argument("--only", choices=sorted(LABELS), help="run one lane alone (for perf stat, callgrind)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log_file = args.query_log or os.path.join(scratch, "query.log")
        asyncio.run(
            main([int(size) for size in args.batches.split(",")], args.queries, args.rounds, log_file, args.only)
        )
