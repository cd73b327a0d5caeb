"""The shared cache's cost to a query: whole queries through ``Frontend.handle`` (every stage) on a resolver with
``[cache.shared]`` on a real redis-server, against one without.

    .venv/bin/python bench/fleet_cache.py [--queries 5000]

Four kinds of query, interleaved one of each in turn so that all see the same load:

- *local hit*: a name this resolver answered before (the fastest path a repeat takes);
- *Redis hit*: a local miss that another resolver's answer in Redis fills (no upstream);
- *Redis miss*: a local miss that Redis does not have either, resolved upstream (a resolver that answers at once);
- *no shared cache*: the same local miss on a resolver without ``[cache.shared]`` — the baseline.

The shared cache's cost on a miss is *Redis miss* − *no shared cache*; a *Redis hit* replaces the upstream round
trip. Wall-clock latency per query, sequential, on uvloop: what a client sees, not throughput; and the CPU time
this process spent per query (the Redis write an answer starts included), which a loaded machine distorts less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.redis import RedisServer
from stages import CONFIG, AnsweringResolver, signed_answer
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend

SEED_ENV = "ZTDNS_BENCH_SEED"


def frontend(url: str | None, resolver: AnsweringResolver) -> Frontend:
    # timeout_ms at its maximum: a lookup slower than it would count as a miss and pause the shared cache (the
    # resolver's defence against a slow Redis), which on a loaded machine would hide the distribution measured.
    shared = f'\n[cache.shared]\nurl = "{url}"\nkey_seed_env = "{SEED_ENV}"\ntimeout_ms = 1000\n' if url else ""
    config = parse_config(CONFIG + shared, "bench", Path("."))
    return Frontend(config, resolver_factory=lambda config: resolver)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(url: str, queries: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
    names = {
        kind: [dns.name.from_text(f"host{i}.{kind}.bench.test") for i in range(queries)]
        for kind in ("filled", "missing", "baseline", "local")
    }
    resolver = AnsweringResolver()
    resolver.answers = {name: signed_answer(name) for group in names.values() for name in group}
    wires = {
        kind: [dns.message.make_query(name, "A", want_dnssec=True).to_wire() for name in group]
        for kind, group in names.items()
    }
    filler, shared, alone = frontend(url, resolver), frontend(url, resolver), frontend(None, resolver)
    for front in (filler, shared, alone):
        front.bind_loop(asyncio.get_running_loop())
    for wire in wires["filled"]:  # another resolver's answers, in Redis before the clock starts
        await filler.handle(wire, client)
    assert filler.shared is not None
    await filler.shared.flush()
    for wire in wires["local"]:
        await shared.handle(wire, client)
    await asyncio.sleep(0.5)  # the writes those answers started
    kinds = {
        "local hit": (shared, wires["local"]),
        "Redis hit": (shared, wires["filled"]),
        "Redis miss (then upstream)": (shared, wires["missing"]),
        "no shared cache (upstream)": (alone, wires["baseline"]),
    }
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(queries):
        for kind, (front, kind_wires) in kinds.items():
            started, spent = time.perf_counter(), time.thread_time()
            if await front.handle(kind_wires[index], client) is None:
                raise RuntimeError("no answer")
            results[kind].append(time.perf_counter() - started)
            await asyncio.sleep(0)  # what runs after the answer (replay registration, the Redis write) runs here
            cpu[kind].append(time.thread_time() - spent)
    assert shared.shared is not None
    store = shared.shared
    print(f"Redis lookups: {store.hits} hits, {store.misses} misses, {store.errors} errors", file=sys.stderr)
    for front in (filler, shared, alone):
        await front.close()
    return results, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    args = parser.parse_args()
    os.environ[SEED_ENV] = "bench seed, not a secret"
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory)).start()
        try:
            results, cpu = uvloop.run(measure(redis.url, args.queries))
        finally:
            redis.stop()
    for kind, values in results.items():
        print(
            f"{kind:28} p50 {statistics.median(values) * 1e3:.3f} ms  p99 {percentile(values, 0.99) * 1e3:.3f} ms  "
            f"max {max(values) * 1e3:.3f} ms  (CPU p50 {statistics.median(cpu[kind]) * 1e6:.0f} µs)"
        )
    added = [
        percentile(results["Redis miss (then upstream)"], f) - percentile(results["no shared cache (upstream)"], f)
        for f in (0.5, 0.99)
    ]
    print(f"added to a miss by the shared cache: p50 {added[0] * 1e3:.3f} ms, p99 {added[1] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
