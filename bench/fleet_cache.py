"""The shared cache's cost on a local miss: a lookup in a real redis-server that hits (the answer parsed and its
TTLs counted down, then stored in the local cache) and one that misses (the query then goes upstream as before).

    .venv/bin/python bench/fleet_cache.py [--queries 5000]

Sequential lookups on one connection under uvloop: the latency a query sees, not throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.redis import RedisServer
from ztdns.cache import MessageCache
from ztdns.config.cache import CacheConfig, SharedCacheConfig
from ztdns.control.shared import SharedCache
from ztdns.model import Question


def question(index: int) -> Question:
    name = dns.name.from_text(f"host{index}.bench.test")
    return Question(name, dns.rdatatype.A, dns.rdataclass.IN, False, False)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(url: str, queries: int) -> tuple[list[float], list[float]]:
    config = SharedCacheConfig(url=url, key_seed_env="UNUSED", timeout_ms=20)
    shared = SharedCache(config, b"0123456789abcdef0123456789abcdef")
    local = MessageCache(CacheConfig(max_entries=queries * 2))
    for index in range(queries):
        query = dns.message.make_query(f"host{index}.bench.test", "A")
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text(f"host{index}.bench.test.", 300, "IN", "A", f"192.0.2.{index % 250 + 1}")
        )
        shared.put(question(index), response, 300)
    await shared.flush()
    assert shared.stores == queries
    hits, misses = [], []
    for index in range(queries):  # alternating: both see the same load
        started = time.perf_counter()
        found = await shared.get(question(index))
        assert found is not None
        local.store(question(index), found)
        hits.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert await shared.get(question(queries + index)) is None
        misses.append(time.perf_counter() - started)
    await shared.close()
    assert shared.errors == 0
    return hits, misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory)).start()
        try:
            hits, misses = uvloop.run(measure(redis.url, args.queries))
        finally:
            redis.stop()
    for label, values in (("hit (parse + local store)", hits), ("miss", misses)):
        print(
            f"shared cache {label}: p50 {statistics.median(values) * 1e3:.3f} ms, "
            f"p99 {percentile(values, 0.99) * 1e3:.3f} ms, max {max(values) * 1e3:.3f} ms"
        )


if __name__ == "__main__":
    main()
