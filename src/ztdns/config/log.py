"""``[log]``: the process log level and the query log (where it goes, how deep its queue is); docs/configuration.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ztdns.config.base import Section


class QueryLogConfig(Section):
    # "stdout", "off", or a file path.
    output: str = "stdout"
    # Queue depth before lines are dropped (and counted) rather than blocking the event loop.
    queue: Annotated[int, Field(ge=1)] = 65_536


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    query_log: QueryLogConfig = QueryLogConfig()
