"""``[server]``: process-wide settings (workers, state directory, drain time on exit); docs/configuration.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ztdns.config.base import Section


class ServerConfig(Section):
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    state_dir: str = "/var/lib/ztdns"
    drain_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
