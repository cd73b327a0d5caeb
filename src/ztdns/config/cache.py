"""``[cache]``: the message cache's size, TTL bounds, serve-stale and prefetch; docs/configuration.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from ztdns.config.base import Section


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

    @model_validator(mode="after")
    def _ttls(self) -> CacheConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is above max_ttl ({self.max_ttl})")
        return self
