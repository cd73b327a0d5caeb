"""``[control]``: the fleet's control plane on NATS JetStream (docs/fleet.md). A node with this section watches
the signed policy bundles in ``bucket``, applies the ones that verify against ``public_key`` and acknowledges the
revision it runs; ``events`` names the JetStream stream fleet-wide events go to (empty: none are published)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from ztdns.config.base import Section

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # NATS KV bucket and key tokens: no dots or wildcards


def check_token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r}: use letters, digits, '-' and '_'")
    return value


class ControlConfig(Section):
    # NATS URLs of the cluster's nodes (any reachable one will do; the client fails over between them).
    servers: Annotated[list[str], Field(min_length=1)]
    bucket: str = "ztdns"
    # The operator's Ed25519 public key (PEM file, relative to the config file): bundles not signed by it are refused.
    public_key: str
    # This node's name in acknowledgements and `ztdns control status` (unique in the fleet).
    node: str
    # Where the last good bundle and its files are kept (the node starts from it when NATS is unreachable).
    state_dir: str = "/var/lib/ztdns/control"
    # The JetStream stream for fleet-wide events (query log, detection verdicts, flow records); "" publishes none.
    events: str = ""
    events_queue: Annotated[int, Field(ge=1)] = 10_000
    events_max_age: Annotated[float, Field(gt=0)] = 7 * 86_400.0  # seconds the stream keeps an event
    # Seconds between heartbeats (`last seen` in `ztdns control status`).
    heartbeat: Annotated[float, Field(gt=0)] = 10.0
    connect_timeout: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("bucket", "node")
    @classmethod
    def _token(cls, value: str) -> str:
        return check_token(value)

    @field_validator("events")
    @classmethod
    def _stream(cls, value: str) -> str:
        return check_token(value) if value else value

    @field_validator("servers")
    @classmethod
    def _servers(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.startswith(("nats://", "tls://")):
                raise ValueError(f"{value!r}: write nats://HOST:PORT or tls://HOST:PORT")
        return values
