"""The cache resolvers share through Redis (``[cache.shared]``, docs/fleet.md).

Only upstream answers are shared — what the cache stage stores, keyed by the question alone — never a decision,
a policy result or anything about who asked. Keys are BLAKE2b of the question keyed with a secret seed, so Redis
holds no names in the clear and nobody without the seed can probe it for a name. Values are the answer's wire
form after the time it was stored; Redis expires them when the answer's TTL runs out (clamped to
``min_ttl``..``max_ttl``), and answers larger than ``max_entry_bytes`` are not shared.

The local cache always comes first; Redis is asked only on a local miss, within ``timeout_ms``. Any failure (Redis
down, slow, a bad value) counts as a miss plus an error, and Redis is left alone for a growing pause (up to 30 s)
so a dead Redis costs nothing per query: clients never see it. Metrics: ``ztdns_shared_cache_{hits,misses,
errors,stores,skipped}``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import redis.asyncio
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ztdns.config.cache import SharedCacheConfig
from ztdns.model import Question

log = logging.getLogger(__name__)

_STORED = struct.Struct("!d")  # time.time() when stored, before the wire
_MAX_PAUSE = 30.0
_CONNECTIONS = 8
_PENDING_WRITES = 10_000  # answers waiting to be written; beyond, they are not shared
_WRITE_BATCH = 256


class SeedError(Exception):
    pass


def load_seed(config: SharedCacheConfig, base_dir: Path) -> bytes:
    """The secret keys are hashed with. Raises SeedError naming the file or variable."""
    if config.key_seed_file:
        path = base_dir / config.key_seed_file
        try:
            seed = path.read_bytes().strip()
        except OSError as exc:
            raise SeedError(f"cannot read the key seed {str(path)!r}: {exc.strerror or exc}") from None
        where = str(path)
    else:
        seed = os.environ.get(config.key_seed_env, "").encode()
        where = f"${config.key_seed_env}"
    if len(seed) < 16:
        raise SeedError(f"the key seed in {where} is shorter than 16 bytes")
    return hashlib.blake2b(seed, digest_size=32).digest()  # BLAKE2b keys are at most 64 bytes


class Connections:
    """A few Redis connections, each carrying one exchange at a time (the commands of an exchange sent in one write).

    The library's client connects, authenticates, selects the database and speaks TLS; its pool is not used: on every
    command it takes a condition and a lock, probes the connection for liveness (a system call) and records
    observability events — more CPU than the lookup it serves. A connection whose exchange failed or ran out of time
    is dropped (its reply may still come and would answer the next command); the next exchange connects anew."""

    def __init__(self, url: str, size: int, connect_timeout: float) -> None:
        template = redis.asyncio.ConnectionPool.from_url(
            url, socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0)
        )  # no socket_timeout: the caller's one timeout covers the exchange
        self._make = functools.partial(template.connection_class, **template.connection_kwargs)
        self._idle: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(size)  # a burst of misses waits for a connection, not opens one each
        self._dropping: set[asyncio.Task[None]] = set()

    async def exchange(self, commands: list[tuple[str | bytes | int, ...]]) -> list[Any]:
        """The replies to ``commands``, pipelined on one connection."""
        async with self._slots:
            connection = self._idle.pop() if self._idle else self._make()
            try:
                # Connects first if it is not connected.
                await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                replies = [await connection.read_response() for _ in commands]
            except BaseException:
                task = asyncio.get_running_loop().create_task(connection.disconnect(nowait=True))
                self._dropping.add(task)
                task.add_done_callback(self._dropping.discard)
                raise
            self._idle.append(connection)
            return replies

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect(nowait=True)


class SharedCache:
    def __init__(self, config: SharedCacheConfig, seed: bytes) -> None:
        self.config = config
        self.seed = seed
        self.timeout = config.timeout_ms / 1000
        # Connecting may take a little longer than a lookup is allowed.
        self.connections = Connections(config.url, _CONNECTIONS, max(self.timeout, 0.05))
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.stores = 0
        self.skipped = 0  # lookups not made while Redis is paused after a failure
        self._paused_until = 0.0
        self._pause = 0.0
        self._writes: asyncio.Queue[tuple[bytes, bytes, int]] = asyncio.Queue(_PENDING_WRITES)
        self._writer: asyncio.Task[None] | None = None

    def key(self, question: Question) -> bytes:
        hasher = hashlib.blake2b(key=self.seed, digest_size=20)
        hasher.update(question.name.to_digestable())  # lower-cased wire form
        flags = question.dnssec_ok | question.checking_disabled << 1
        hasher.update(struct.pack("!HHB", question.rdtype, question.rdclass, flags))
        return b"ztdns:" + hasher.digest()

    def _available(self) -> bool:
        if self._paused_until and time.monotonic() < self._paused_until:
            self.skipped += 1
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now < self._paused_until:
            return  # one of the requests in flight when Redis failed: the pause is already on
        self._pause = min(max(self._pause * 2, 0.5), _MAX_PAUSE)
        self._paused_until = now + self._pause
        log.warning("shared cache: %s: %s; local cache only for %.1f s", type(exc).__name__, exc, self._pause)

    async def get(self, question: Question) -> dns.message.Message | None:
        """The answer another resolver stored, its TTLs counted down; None on a miss or any failure."""
        if not self._available():
            return None
        try:
            async with asyncio.timeout(self.timeout):  # no task per lookup, as wait_for would make
                (value,) = await self.connections.exchange([("GET", self.key(question))])
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self._pause, self._paused_until = 0.0, 0.0
        if not isinstance(value, bytes) or len(value) <= _STORED.size:
            self.misses += 1
            return None
        (stored,) = _STORED.unpack_from(value)
        try:
            message = dns.message.from_wire(value[_STORED.size :])
        except dns.exception.DNSException as exc:
            self._failed(exc)
            return None
        age = max(int(time.time() - stored), 0)
        for section in (message.answer, message.authority, message.additional):
            for rrset in section:
                rrset.ttl = max(rrset.ttl - age, 0)
        self.hits += 1
        return message

    def put(self, question: Question, response: dns.message.Message, ttl: int) -> None:
        """Share an answer the cache stored, in the background."""
        if ttl < self.config.min_ttl or not self._available():
            return
        try:
            wire = response.to_wire()
        except dns.exception.DNSException:
            return
        if len(wire) > self.config.max_entry_bytes:
            return
        value = _STORED.pack(time.time()) + wire
        try:
            self._writes.put_nowait((self.key(question), value, min(ttl, self.config.max_ttl)))
        except asyncio.QueueFull:
            self.skipped += 1
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def flush(self) -> None:
        """Until the answers put so far are written (or failed)."""
        if self._writer is not None:
            await self._writer

    async def _write(self) -> None:
        """Write pending answers in pipelined batches on one connection until none are left."""
        while not self._writes.empty():
            batch = [self._writes.get_nowait() for _ in range(min(self._writes.qsize(), _WRITE_BATCH))]
            try:
                async with asyncio.timeout(max(self.timeout * 10, 0.5)):
                    await self.connections.exchange([("SET", key, value, "EX", ttl) for key, value, ttl in batch])
                self.stores += len(batch)
            except (redis.RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
                return

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ztdns_shared_cache_hits", "Answers found in the shared cache", value=self.hits)
        yield CounterMetricFamily(
            "ztdns_shared_cache_misses", "Shared cache lookups that found nothing", value=self.misses
        )
        yield CounterMetricFamily(
            "ztdns_shared_cache_errors",
            "Shared cache lookups or stores that failed (Redis down or slow)",
            value=self.errors,
        )
        yield CounterMetricFamily("ztdns_shared_cache_stores", "Answers written to the shared cache", value=self.stores)
        yield CounterMetricFamily(
            "ztdns_shared_cache_skipped", "Lookups not made while Redis is paused after a failure", value=self.skipped
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await self.connections.close()
