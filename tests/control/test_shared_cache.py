"""The Redis cache resolvers share: two real `ztdns serve` processes, a real redis-server and a real Unbound."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from fixtures.redis import RedisServer
from fixtures.server import ServerProcess, udp_query
from fixtures.unbound import UnboundFactory, free_port

pytestmark = pytest.mark.slow

NAMES = 300
DATA = [f"n{i}.example.test. 300 IN A 192.0.2.{i % 250 + 1}" for i in range(NAMES)]


def node_text(port: int, metrics_port: int, upstream: str, redis_url: str, seed: Path) -> str:
    return f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[resolver]
upstreams = [{{ address = "{upstream}" }}]
timeout = 0.5
budget = 1.0

[cache]
serve_stale = false

[cache.shared]
url = "{redis_url}"
key_seed_file = "{seed}"
timeout_ms = 50

[identities.office]
networks = ["127.0.0.1/32"]
policies = ["web"]

[policies.web]
allow = ["**.example.test"]

[dnssec]
validation = false

[attestation]
evidence = "none"

[log.query_log]
output = "off"

[metrics]
address = "127.0.0.1:{metrics_port}"
"""


def metric(metrics_port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported:\n{body}")


class Node:
    def __init__(self, directory: Path, upstream: str, redis: RedisServer, seed: Path) -> None:
        directory.mkdir()
        self.port, self.metrics_port = free_port(), free_port()
        text = node_text(self.port, self.metrics_port, upstream, redis.url, seed)
        self.process = ServerProcess(text, directory, port=self.port).start()

    def metric(self, name: str) -> float:
        return metric(self.metrics_port, name)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    path = tmp_path / "seed"
    path.write_text("a secret of more than sixteen bytes\n")
    return path


def test_a_miss_on_b_is_filled_by_a_earlier_answer(
    tmp_path: Path, unbound_upstream: UnboundFactory, redis: RedisServer, seed: Path
) -> None:
    upstream = unbound_upstream(DATA, zones=("example.test.",))
    a = Node(tmp_path / "a", upstream, redis, seed)
    b = Node(tmp_path / "b", f"127.0.0.1:{free_port()}", redis, seed)  # B's upstream is dead: only Redis can answer
    try:
        assert udp_query(a.port, "n7.example.test").answer[0][0].to_text() == "192.0.2.8"
        deadline = time.monotonic() + 5
        while a.metric("ztdns_shared_cache_stores_total") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = udp_query(b.port, "n7.example.test")
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer[0][0].to_text() == "192.0.2.8"
        assert 0 < response.answer[0].ttl <= 300
        assert b.metric("ztdns_shared_cache_hits_total") == 1
        assert udp_query(b.port, "n8.example.test").rcode() == dns.rcode.SERVFAIL  # not shared: B's upstream
    finally:
        a.process.stop()
        b.process.stop()


def test_redis_killed_mid_load_costs_no_servfail_and_counts_errors(
    tmp_path: Path, unbound_upstream: UnboundFactory, redis: RedisServer, seed: Path
) -> None:
    upstream = unbound_upstream(DATA, zones=("example.test.",))
    a = Node(tmp_path / "a", upstream, redis, seed)
    try:
        rcodes = []
        for i in range(NAMES):
            if i == NAMES // 3:
                # Answers are written in the background: a slow start (a loaded machine) may not have written the
                # first ones yet. Redis goes away once it has some, mid-load.
                deadline = time.monotonic() + 30
                while a.metric("ztdns_shared_cache_stores_total") < 1:
                    assert time.monotonic() < deadline, "no answer written to Redis"
                    time.sleep(0.05)
                redis.stop()
            rcodes.append(udp_query(a.port, f"n{i}.example.test").rcode())
        assert rcodes == [dns.rcode.NOERROR] * NAMES
        assert a.metric("ztdns_shared_cache_errors_total") >= 1
    finally:
        a.process.stop()


def test_a_burst_of_answers_is_written_in_batches_without_errors(redis: RedisServer) -> None:
    """Regression: one write task (and connection) per answer hit Redis's client limit on a burst of misses."""
    import asyncio

    import dns.message
    import dns.name
    import dns.rrset

    from ztdns.config.cache import SharedCacheConfig
    from ztdns.control.shared import SharedCache
    from ztdns.model import Question

    async def burst() -> SharedCache:
        shared = SharedCache(SharedCacheConfig(url=redis.url, key_seed_env="UNUSED"), b"s" * 32)
        for index in range(5000):
            name = f"n{index}.example.test."
            response = dns.message.make_response(dns.message.make_query(name, "A"))
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
            shared.put(Question(dns.name.from_text(name), 1, 1, False, False), response, 300)
        await shared.flush()
        found = await shared.get(Question(dns.name.from_text("n4999.example.test."), 1, 1, False, False))
        assert found is not None and found.answer[0][0].to_text() == "192.0.2.1"
        await shared.close()
        return shared

    shared = asyncio.run(burst())
    assert (shared.stores, shared.errors, shared.skipped) == (5000, 0, 0)
