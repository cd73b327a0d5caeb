"""Agent plumbing latency: stub receives a query → answer parsed → set updated in the kernel → answer released.

Runs the real StubHandler, AllowState, SetWriter and libnftables against a real ``inet ztdns`` table in a
network namespace this script creates (root needed). The upstream is replaced by an in-process answer
synthesiser so that only the agent's own work is timed (every name is distinct and gets its own address, the
worst case for the set). Also: the cost of one set update and the memory with 100k live addresses.

Peer figures: the same set update done by spawning ``nft`` per answer (what shell-script integrations do), and
Cilium's published DNS-proxy p50 of 2.9 ms. Targets: p50 ≤ 0.3 ms, p99 ≤ 2 ms.

    python bench/agent_latency.py [--seconds 3] [--rates 1000,10000] [--live 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time

import dns.message
import dns.rrset

from ztdns.agent.allowstate import AllowState
from ztdns.agent.answers import message_id, with_id
from ztdns.agent.config import AgentConfig, AllowConfig
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.nft import Nft
from ztdns.agent.ruleset import build_ruleset, element_script
from ztdns.agent.setwriter import SetWriter
from ztdns.agent.stub import StubHandler
from ztdns.config import parse_model

CILIUM_P50_MS = 2.9
CONFIG = '[[server]]\naddress = "192.0.2.10:853"\nhostname = "dns.test"\n[metrics]\naddress = ""\n'


def address_of(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


class Synthesiser:
    """Stands in for the protective servers: answers n<i>.bench. with A 10.x.y.z, TTL 300, no I/O.

    Responses are built before the timed run (``prepare``), keyed by question, so the upstream costs nothing.
    """

    def __init__(self) -> None:
        self.servers: list[object] = []
        self.responses: dict[bytes, bytes] = {}

    def prepare(self, query_wire: bytes, index: int) -> None:
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", address_of(index)))
        self.responses[query_wire[12:]] = response.to_wire()

    async def query(self, wire: bytes) -> bytes:
        return with_id(self.responses.pop(wire[12:]), message_id(wire))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def run_rate(
    handler: StubHandler, upstream: Synthesiser, rate: int, seconds: float, start_index: int
) -> list[float]:
    """Send ``rate`` distinct names per second for ``seconds``; per-answer latency in ms."""
    latencies: list[float] = []
    queries = []
    for i in range(int(rate * seconds)):
        wire = dns.message.make_query(f"n{start_index + i}.bench.", "A").to_wire()
        upstream.prepare(wire, start_index + i)
        queries.append(wire)

    async def one(wire: bytes) -> None:
        started = time.perf_counter()
        await handler.handle(wire)
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    begin = time.perf_counter()
    for index, wire in enumerate(queries):
        due = begin + index / rate
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(one(wire)))
    await asyncio.gather(*tasks)
    return latencies


def fill(nft: Nft, state: AllowState, count: int, offset: int) -> float:
    started = time.perf_counter()
    for block in range(0, count, 1000):
        timeouts: dict[str, int] = {}
        for i in range(block, min(count, block + 1000)):
            timeouts.update(state.answer(f"f{i}.bench", [(address_of(offset + i), 3600)], time.time()).timeouts)
        nft.run(element_script(timeouts, ()))
    return time.perf_counter() - started


def single_update_ms(nft: Nft, rounds: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(rounds):
        nft.run(element_script({address_of(offset + i): 300}, ()))
    return (time.perf_counter() - started) / rounds * 1000


def spawn_update_ms(rounds: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(rounds):
        subprocess.run(
            ["nft", "-f", "-"], input=element_script({address_of(offset + i): 300}, ()), text=True, check=True
        )
    return (time.perf_counter() - started) / rounds * 1000


async def main(args: argparse.Namespace) -> None:
    config = parse_model(AgentConfig, CONFIG)
    nft = Nft()
    nft.run(build_ruleset(config))
    state = AllowState(AllowConfig(max_addresses_per_name=16))
    metrics = AgentMetrics()
    upstream = Synthesiser()
    handler = StubHandler(
        upstream,  # type: ignore[arg-type]
        state,
        SetWriter(nft, lambda batch: None),
        metrics,
        "",
        lambda message: print("error:", message, file=sys.stderr),
    )
    print(f"{'rate/s':>8} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   target p50 ≤ 0.3, p99 ≤ 2")
    next_index = 0
    for rate in args.rates:
        await run_rate(handler, upstream, min(rate, 500), 0.2, 10_000_000 + next_index)  # warm up
        latencies = await run_rate(handler, upstream, rate, args.seconds, next_index)
        next_index += len(latencies)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(f"{rate:>8} {len(latencies):>8} {p50:>8.3f} {p99:>8.3f} {max(latencies):>8.3f}")
        print(f"{'':>8} ztdns p50 {p50:.3f} ms vs Cilium proxy p50 {CILIUM_P50_MS} ms: ratio {p50 / CILIUM_P50_MS:.2f}")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fill_seconds = fill(nft, state, args.live, 1 << 20)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nfilled {args.live} live addresses in {fill_seconds:.2f} s; live now {len(state)}")
    print(f"agent memory growth ≈ {(rss_after - rss_before) / 1024:.1f} MiB (max RSS {rss_after / 1024:.1f} MiB)")
    ours = single_update_ms(nft, 300, 1 << 22)
    spawned = spawn_update_ms(30, 1 << 23)
    print(f"one-address set update with {len(state)} live: ztdns (one libnftables handle) {ours:.3f} ms, ")
    print(f"  spawning nft per update {spawned:.3f} ms, ratio {ours / spawned:.3f}")
    nft.run("delete table inet ztdns")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per rate (default 3)")
    parser.add_argument("--rates", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 10000])
    parser.add_argument("--live", type=int, default=100_000, help="live addresses for the memory/cost run")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_latency: needs root (it creates a network namespace and an nftables table)")
    namespace = os.environ.get("ZTDNS_BENCH_NETNS")
    if namespace is None:
        namespace = f"ztdns-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        try:
            env = {**os.environ, "ZTDNS_BENCH_NETNS": namespace}
            command = ["ip", "netns", "exec", namespace, sys.executable, *sys.argv]
            sys.exit(subprocess.run(command, env=env, check=False).returncode)
        finally:
            subprocess.run(["ip", "netns", "del", namespace], check=False)
    asyncio.run(main(arguments))
