"""``[cache]``: the message cache's size, TTL bounds, serve-stale and prefetch; docs/configuration.md.
``[cache.shared]``: the Redis cache resolvers share; docs/fleet.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from ztdns.config.base import Section


class SharedCacheConfig(Section):
    """``[cache.shared]``: upstream answers shared between resolvers through Redis (docs/fleet.md)."""

    url: str  # redis://HOST:PORT/DB or unix:///PATH
    # The secret that keys are hashed with (BLAKE2b): names asked never appear in Redis. From a file (relative to the
    # config file) or an environment variable; one of the two.
    key_seed_file: str = ""
    key_seed_env: str = ""
    min_ttl: Annotated[int, Field(ge=1)] = 5  # answers living shorter are not worth a round trip
    max_ttl: Annotated[int, Field(ge=1)] = 3_600
    max_entry_bytes: Annotated[int, Field(ge=64, le=65_535)] = 4_096
    # Milliseconds a lookup may wait for Redis before the query goes upstream as if Redis had no entry.
    timeout_ms: Annotated[int, Field(ge=1, le=1_000)] = 20

    @model_validator(mode="after")
    def _seed(self) -> SharedCacheConfig:
        if bool(self.key_seed_file) == bool(self.key_seed_env):
            raise ValueError("set one of key_seed_file and key_seed_env (the secret keys are hashed with)")
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{self.url!r}: write redis://HOST:PORT/DB, rediss://... or unix:///PATH")
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is above max_ttl ({self.max_ttl})")
        return self


class CacheConfig(Section):
    max_entries: Annotated[int, Field(ge=0)] = 100_000
    min_ttl: Annotated[int, Field(ge=0)] = 0
    max_ttl: Annotated[int, Field(ge=0)] = 86_400
    negative_max_ttl: Annotated[int, Field(ge=0)] = 3_600
    serve_stale: bool = True
    stale_max_age: Annotated[int, Field(ge=0)] = 86_400
    stale_answer_ttl: Annotated[int, Field(ge=1)] = 30
    # RFC 8767 client response timer: with stale data at hand, answer with it after this long (0: wait for the end).
    stale_client_timeout: Annotated[float, Field(ge=0, le=60)] = 1.8
    prefetch: bool = True
    prefetch_min_hits: Annotated[int, Field(ge=1)] = 3
    prefetch_window: Annotated[float, Field(gt=0, lt=1)] = 0.1
    shared: SharedCacheConfig | None = None

    @model_validator(mode="after")
    def _ttls(self) -> CacheConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is above max_ttl ({self.max_ttl})")
        return self
