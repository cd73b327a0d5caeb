"""The NATS connection every fleet command and node uses: one place for URLs, timeouts and bucket settings."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

BUNDLE_KEY = "bundle.{role}"
NODE_KEY = "node.{node}"

log = logging.getLogger(__name__)


async def connect(servers: list[str], timeout: float, reconnect: bool = True) -> Client:
    """Connected to one of ``servers``; with ``reconnect`` the client fails over between them for ever."""
    options: dict[str, Any] = {
        "servers": servers,
        "connect_timeout": timeout,
        "allow_reconnect": reconnect,
        "max_reconnect_attempts": -1 if reconnect else 0,
        "reconnect_time_wait": 0.5,
        "error_cb": _quiet,  # the default logs a traceback per failed attempt; callers report reachability
    }
    return await nats.connect(**options)


# JetStream's "no suitable peers for placement": a cluster that has just started (or lost a node) does not know
# all its peers yet, so a replicated bucket cannot be placed for a moment.
_NO_PEERS_YET = 10005


def transient(exc: Exception) -> bool:
    """Whether a JetStream request failed for a reason that passes by itself: a node died mid-request, a leader
    is being elected, the cluster's peers are still joining."""
    if isinstance(exc, BadRequestError):
        return exc.err_code == _NO_PEERS_YET
    return isinstance(exc, nats.errors.TimeoutError | nats.errors.NoRespondersError | ServiceUnavailableError)


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def bucket(client: Client, name: str, create: bool = False, replicas: int = 1) -> KeyValue:
    """The key-value bucket ``name``; made (history 16, file storage) if ``create`` and absent."""
    js = client.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            raise
        config = KeyValueConfig(bucket=name, history=16, storage=StorageType.FILE, replicas=replicas)
        return await js.create_key_value(config=config)
