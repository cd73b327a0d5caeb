"""Agent plumbing latency: stub receives a query → answer parsed → set updated in the kernel → answer released.

Runs the real agent (``Agent``: UDP stub listener, stub handler, allow state, set writer over netlink, grant
journal, metrics, table watch) on uvloop against a real ``inet ztdns`` table in a network namespace this script
creates (root needed). Only the protective servers are replaced, by an in-process answer synthesiser, so that the
agent's own work is timed; every name is distinct and gets its own address (the worst case for the set). A
client process sends the queries over UDP, each at its due time, and times each one from just before ``send`` to
just after ``recv``: the figures include the loopback round trip and the client's own scheduling, an upper bound
of what the agent adds. Beside them, the agent's own view: from reading each datagram to sending its answer
(``in agent``: stub receive → set updated → answer released, the quantity the targets name). Also: the unpaced
capacity, the cost of one set update and the memory with 100k live addresses.

Peer figures: the same one-address update through one libnftables handle (script text) and by spawning ``nft``
per answer (what shell-script integrations do), and Cilium's published DNS-proxy p50 of 2.9 ms.
Targets: p50 ≤ 0.3 ms, p99 ≤ 2 ms.

    python bench/agent_latency.py [--seconds 3] [--rates 1000,10000] [--live 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import uvloop

from ztdns.agent.nft import NftError
from ztdns.agent.service import Agent
from ztdns.agent.setwriter import packed_sets
from ztdns.agent.stub import StubHandler
from ztdns.config import parse_model
from ztdns.config.agent import AgentConfig
from ztdns.wire.header import message_id, with_id

CILIUM_P50_MS = 2.9
CONFIG = """resolv_conf = ""
[stub]
listen = ["127.0.0.1:53"]
[[server]]
address = "192.0.2.10:853"
hostname = "dns.test"
[allow]
max_addresses_per_name = 16
[metrics]
address = ""
"""


def element_script(timeouts: dict[str, int]) -> str:
    """The same update as nft script text (add, delete, add back: exact timeouts), for the peer figures."""
    lines = []
    for set_name, v6 in (("allow4", False), ("allow6", True)):
        addresses = [a for a in timeouts if (":" in a) is v6]
        if addresses:
            target = f"element inet ztdns {set_name}"
            with_timeouts = ", ".join(f"{a} timeout {timeouts[a]}s" for a in addresses)
            lines += [f"add {target} {{ {with_timeouts} }}", f"delete {target} {{ {', '.join(addresses)} }}"]
            lines.append(f"add {target} {{ {with_timeouts} }}")
    return "\n".join(lines) + "\n"


def address_of(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


class Synthesiser:
    """Stands in for the protective servers: answers n<i>.bench. with A 10.x.y.z, TTL 300, no I/O.

    Responses are built before the timed run (``prepare``), keyed by question, so the upstream costs nothing.
    """

    def __init__(self) -> None:
        self.responses: dict[bytes, bytes] = {}

    def prepare(self, query_wire: bytes, index: int, ttl: int) -> None:
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", address_of(index)))
        self.responses[query_wire[12:]] = response.to_wire()

    async def query(self, wire: bytes) -> bytes:
        return with_id(self.responses.pop(wire[12:]), message_id(wire))


class ReleaseTimes:
    """The agent's own view of each answer: from the moment the stub reads the datagram to the moment it sends
    the answer (stub receive → set updated → answer released), without the client's scheduling and the loopback
    round trip. Wraps the handler the UDP listener calls, from outside: the agent has no hook for this."""

    def __init__(self, handler: StubHandler) -> None:
        self.samples: list[float] = []
        inner = handler.handle

        def handle(query: bytes, release: Callable[[bytes], None], peer: Any = None) -> Coroutine[Any, Any, bool]:
            received = time.perf_counter()  # called by datagram_received, in the same callback

            def timed(response: bytes) -> None:
                self.samples.append((time.perf_counter() - received) * 1000)
                release(response)

            return inner(query, timed, peer)

        handler.handle = handle  # type: ignore[method-assign]

    def take(self) -> list[float]:
        samples, self.samples = sorted(self.samples), []
        return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def distinct_queries(upstream: Synthesiser, count: int, start_index: int, ttl: int = 300) -> list[bytes]:
    """``count`` queries for distinct names, their answers (with ``ttl``) prepared in ``upstream``."""
    queries = []
    for i in range(count):
        wire = dns.message.make_query(f"n{start_index + i}.bench.", "A").to_wire()
        upstream.prepare(wire, start_index + i, ttl)
        queries.append(wire)
    return queries


def udp_client(path: str, rate: int, server: str) -> None:
    """(Its own process.) Send the length-prefixed queries in PATH to the stub at SERVER over UDP, RATE per second,
    each at its due time; print JSON: round-trip p50/p99/max in ms, answers, unanswered."""
    data = Path(path).read_bytes()
    queries = []
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 2], "big")
        queries.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    host, port = server.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    sent: dict[int, float] = {}
    rtts: list[float] = []

    def drain() -> None:
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                return
            received = time.perf_counter()
            started = sent.pop(int.from_bytes(reply[:2], "big"), None)
            if started is not None:
                rtts.append((received - started) * 1000)

    begin = time.perf_counter() + 0.05
    for index, wire in enumerate(queries):
        due = begin + index / rate
        while (wait := due - time.perf_counter()) > 0:
            select.select([sock], [], [], wait)
            drain()
        ident = index & 0xFFFF  # unique among the few in flight
        sent[ident] = time.perf_counter()
        sock.send(ident.to_bytes(2, "big") + wire[2:])
    deadline = time.perf_counter() + 3
    while sent and time.perf_counter() < deadline:
        select.select([sock], [], [], 0.05)
        drain()
    rtts.sort()
    summary: dict[str, float] = {"answers": len(rtts), "unanswered": len(sent)}
    if rtts:
        summary |= {"p50": percentile(rtts, 0.5), "p99": percentile(rtts, 0.99), "max": rtts[-1]}
    print(json.dumps(summary))


async def run_rate(
    upstream: Synthesiser, queries: list[bytes], rate: int, folder: Path, stub: str
) -> tuple[dict[str, float], float]:
    """The UDP client's figures for ``queries`` at ``rate``, and the agent process's CPU seconds meanwhile."""
    path = folder / f"queries-{rate}-{len(queries)}"
    path.write_bytes(b"".join(len(q).to_bytes(2, "big") + q for q in queries))
    cpu = time.process_time()
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(path), "--rate", str(rate), "--stub", stub, stdout=PIPE
    )
    out, _ = await client.communicate()
    summary: dict[str, float] = json.loads(out)
    return summary, time.process_time() - cpu


async def capacity(handler: StubHandler, queries: list[bytes], burst: int) -> tuple[float, float]:
    """Answers per second with no pacing (``burst`` queries at a time), and CPU µs per answer: the headroom."""
    cpu, started = time.process_time(), time.perf_counter()
    for start in range(0, len(queries), burst):
        await asyncio.gather(*(handler.ask(wire) for wire in queries[start : start + burst]))
    wall = time.perf_counter() - started
    return len(queries) / wall, (time.process_time() - cpu) / len(queries) * 1e6


async def fill(agent: Agent, count: int, offset: int) -> float:
    """Open ``count`` more addresses, 1000 answers per transaction; seconds taken."""
    started = time.perf_counter()
    for block in range(0, count, 1000):
        update = agent.writer.pending()
        for i in range(block, min(count, block + 1000)):
            agent.state.answer(f"f{i}.bench", [(address_of(offset + i), 3600)], time.time(), "", update)
        committed: asyncio.Future[NftError | None] = asyncio.get_running_loop().create_future()
        agent.writer.after_commit(committed.set_result)
        if failure := await committed:
            raise failure
    return time.perf_counter() - started


def single_update_ms(agent: Agent, rounds: int, offset: int) -> tuple[float, float]:
    """One-address update: through the agent's netlink writer, and through its libnftables handle."""
    started = time.perf_counter()
    for i in range(rounds):
        agent.elements.write(packed_sets({address_of(offset + i): 300}, ()))
    netlink = (time.perf_counter() - started) / rounds * 1000
    started = time.perf_counter()
    for i in range(rounds):
        agent.nft.run(element_script({address_of(offset + rounds + i): 300}))
    return netlink, (time.perf_counter() - started) / rounds * 1000


def spawn_update_ms(rounds: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(rounds):
        subprocess.run(["nft", "-f", "-"], input=element_script({address_of(offset + i): 300}), text=True, check=True)
    return (time.perf_counter() - started) / rounds * 1000


async def main(args: argparse.Namespace) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="ztdns-bench-agent-"))
    config = parse_model(AgentConfig, f'state_dir = "{state_dir}"\n' + CONFIG)
    upstream = Synthesiser()
    agent = Agent(config, upstream)
    await agent.start()
    handler = agent.handler
    released = ReleaseTimes(handler)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} CPUs")
    head = f"{'rate/s':>8} {'answers':>8} {'':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU µs/answer':>14}"
    print(f"{head}   target p50 ≤ 0.3, p99 ≤ 2")
    next_index = 0
    stub = config.stub.listen[0]
    # The last run: lifetimes of 2 s (TTL 1, no floor, grace 1), so that as many addresses expire as are opened —
    # the steady state, with the expiry sweep and the kernel's own expiry at work while answers are timed.
    runs = [(rate, 300, f"{rate}") for rate in args.rates] + [(args.rates[-1], 1, f"{args.rates[-1]}*")]
    for rate, ttl, label in runs:
        if ttl < 60:
            agent.state.config = config.allow.model_copy(update={"ttl_floor": 0, "grace": 1})
        await run_rate(upstream, distinct_queries(upstream, 200, 10_000_000 + next_index), 1000, state_dir, stub)
        released.take()
        queries = distinct_queries(upstream, int(rate * args.seconds), next_index, ttl)
        summary, cpu = await run_rate(upstream, queries, rate, state_dir, stub)
        inside = released.take()
        next_index += len(queries)
        p50, p99, worst = summary["p50"], summary["p99"], summary["max"]
        per_answer = cpu / max(1, summary["answers"]) * 1e6
        row = f"{p50:>8.3f} {p99:>8.3f} {worst:>8.3f} {per_answer:>14.1f}"
        print(f"{label:>8} {summary['answers']:>8.0f} {'client':>10} {row}")
        if inside:
            row = f"{percentile(inside, 0.5):>8.3f} {percentile(inside, 0.99):>8.3f} {inside[-1]:>8.3f}"
            print(f"{'':>8} {len(inside):>8} {'in agent':>10} {row}")
        if summary["unanswered"]:
            print(f"{'':>8} {summary['unanswered']:.0f} queries unanswered")
        print(f"{'':>8} ztdns p50 {p50:.3f} ms vs Cilium proxy p50 {CILIUM_P50_MS} ms: ratio {p50 / CILIUM_P50_MS:.2f}")
    print(f"{'':>8} *: 2 s lifetimes, as many addresses expiring as opened ({agent.metrics.expired} expired)")
    agent.state.config = config.allow
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the runs")
    queries = distinct_queries(upstream, 30_000, 50_000_000)
    per_second, cpu = await capacity(handler, queries, 10)
    print(f"unpaced, 10 at a time: {per_second:,.0f} answers/s, CPU {cpu:.1f} µs/answer (the agent's headroom)")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fill_seconds = await fill(agent, args.live, 1 << 20)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nfilled {args.live} live addresses in {fill_seconds:.2f} s; live now {len(agent.state)}")
    print(f"agent memory growth ≈ {(rss_after - rss_before) / 1024:.1f} MiB (max RSS {rss_after / 1024:.1f} MiB)")
    ours, handle = single_update_ms(agent, 300, 1 << 22)
    spawned = spawn_update_ms(30, 1 << 23)
    print(f"one-address set update with {len(agent.state)} live: ztdns (netlink batch) {ours:.3f} ms,")
    print(f"  one libnftables handle (script text) {handle:.3f} ms, spawning nft per update {spawned:.3f} ms,")
    print(f"  ratio ztdns/spawn {ours / spawned:.3f}")
    await agent.stop()
    agent.nft.run("delete table inet ztdns")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per rate (default 3)")
    parser.add_argument("--rates", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 10000])
    parser.add_argument("--live", type=int, default=100_000, help="live addresses for the memory/cost run")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the UDP client on this file
    parser.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.client:
        udp_client(arguments.client, arguments.rate, arguments.stub)
        sys.exit(0)
    if os.geteuid() != 0:
        sys.exit("agent_latency: needs root (it creates a network namespace and an nftables table)")
    namespace = os.environ.get("ZTDNS_BENCH_NETNS")
    if namespace is None:
        namespace = f"ztdns-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        try:
            subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
            env = {**os.environ, "ZTDNS_BENCH_NETNS": namespace}
            command = ["ip", "netns", "exec", namespace, sys.executable, *sys.argv]
            sys.exit(subprocess.run(command, env=env, check=False).returncode)
        finally:
            subprocess.run(["ip", "netns", "del", namespace], check=False)
    uvloop.run(main(arguments))
