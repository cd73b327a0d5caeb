"""Agent plumbing latency: stub receives a query → answer parsed → set updated in the kernel → answer released.

Runs the real agent (``Agent``: stub handler, allow state, set writer over netlink, grant journal, metrics,
table watch) on uvloop against a real ``inet ztdns`` table in a network namespace this script creates (root
needed). Only the protective servers are replaced, by an in-process answer synthesiser, so that the agent's own
work is timed; every name is distinct and gets its own address (the worst case for the set). Also: the cost of
one set update and the memory with 100k live addresses.

Peer figures: the same one-address update through one libnftables handle (script text) and by spawning ``nft``
per answer (what shell-script integrations do), and Cilium's published DNS-proxy p50 of 2.9 ms.
Targets: p50 ≤ 0.3 ms, p99 ≤ 2 ms.

    python bench/agent_latency.py [--seconds 3] [--rates 1000,10000] [--live 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset
import uvloop

from ztdns.agent.answers import message_id, with_id
from ztdns.agent.config import AgentConfig
from ztdns.agent.service import Agent
from ztdns.agent.setwriter import packed_sets
from ztdns.agent.stub import StubHandler
from ztdns.config import parse_model

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


def distinct_queries(upstream: Synthesiser, count: int, start_index: int) -> list[bytes]:
    """``count`` queries for distinct names, their answers prepared in ``upstream``."""
    queries = []
    for i in range(count):
        wire = dns.message.make_query(f"n{start_index + i}.bench.", "A").to_wire()
        upstream.prepare(wire, start_index + i)
        queries.append(wire)
    return queries


async def run_rate(handler: StubHandler, queries: list[bytes], rate: int) -> tuple[list[float], float]:
    """Hand ``queries`` to the stub at ``rate`` per second, as datagrams arriving on its socket would be: every
    millisecond, the ones due since the last tick (the loop's timers have millisecond resolution).

    Returns per-answer latency in ms — from the moment the loop hands the query over (where the UDP listener's
    ``datagram_received`` creates the query's task) until the answer is released — and the process CPU seconds.
    """
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    sent = 0
    done = loop.create_future()

    # Tasks are not kept (the listener does not keep them either): thousands of finished tasks would only
    # give the garbage collector more to walk.
    def released(received: float, task: asyncio.Task[bytes | None]) -> None:
        latencies.append((time.perf_counter() - received) * 1000)
        if len(latencies) == len(queries):
            done.set_result(None)

    def tick() -> None:
        nonlocal sent
        now = time.perf_counter()
        due = min(len(queries), int((now - begin) * rate) + 1)
        for wire in queries[sent:due]:
            pending.add(task := loop.create_task(handler.handle(wire)))
            task.add_done_callback(pending.discard)
            task.add_done_callback(functools.partial(released, now))
        sent = due
        if sent < len(queries):
            loop.call_later(0.001, tick)

    pending: set[asyncio.Task[bytes | None]] = set()  # strong references while running
    cpu = time.process_time()
    begin = time.perf_counter()
    tick()
    await done
    return latencies, time.process_time() - cpu


async def fill(agent: Agent, count: int, offset: int) -> float:
    """Open ``count`` more addresses, 1000 answers per transaction; seconds taken."""
    started = time.perf_counter()
    for block in range(0, count, 1000):
        update, committed = agent.writer.pending()
        for i in range(block, min(count, block + 1000)):
            agent.state.answer(f"f{i}.bench", [(address_of(offset + i), 3600)], time.time(), "", update)
        await committed
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
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} CPUs")
    head = f"{'rate/s':>8} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU µs/answer':>14}"
    print(f"{head}   target p50 ≤ 0.3, p99 ≤ 2")
    next_index = 0
    for rate in args.rates:
        warm_up = distinct_queries(upstream, 100, 10_000_000 + next_index)
        await run_rate(handler, warm_up, min(rate, 500))
        queries = distinct_queries(upstream, int(rate * args.seconds), next_index)
        latencies, cpu = await run_rate(handler, queries, rate)
        next_index += len(latencies)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        per_answer = cpu / len(latencies) * 1e6
        print(f"{rate:>8} {len(latencies):>8} {p50:>8.3f} {p99:>8.3f} {max(latencies):>8.3f} {per_answer:>14.1f}")
        print(f"{'':>8} ztdns p50 {p50:.3f} ms vs Cilium proxy p50 {CILIUM_P50_MS} ms: ratio {p50 / CILIUM_P50_MS:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the runs")

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
    uvloop.run(main(arguments))
