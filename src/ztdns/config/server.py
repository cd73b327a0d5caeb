"""``[server]``: process-wide settings (workers, state directory, drain time on exit, the largest UDP answer sent
to clients); docs/configuration.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ztdns.config.base import Section


class ServerConfig(Section):
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    state_dir: str = "/var/lib/ztdns"
    drain_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    # A client's EDNS payload size is honoured up to this (Unbound's max-udp-size); DNS flag day 2020: 1232.
    max_udp_payload: Annotated[int, Field(ge=512, le=65535)] = 1232
