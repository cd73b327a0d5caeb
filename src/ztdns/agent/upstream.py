"""The agent's way to the protective resolvers: the DoT (RFC 7858) and DoH (RFC 8484) clients of
:mod:`ztdns.resolver.encrypted` — one reused connection per server, queries pipelined or multiplexed on it, the
host's client certificate presented — with failover in configured order and a short hold-down for servers that
failed. Servers of both kinds mix freely in one list. The agent resolves no other way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

from ztdns.attest.gate import AttestationGate
from ztdns.config.agent import AgentConfig, ServerConfig
from ztdns.resolver import encrypted
from ztdns.resolver.encrypted import DohUpstream, DotUpstream, TlsClientSettings

log = logging.getLogger("ztdns.agent.upstream")

_HOLD_DOWN = (1.0, 30.0)  # first and longest hold-down after a failure, seconds


class UpstreamError(Exception):
    """No protective server answered."""


def client_for(config: AgentConfig, server: ServerConfig) -> DotUpstream | DohUpstream:
    """The client for one configured server: verified against ``tls.ca_file`` and ``hostname``, with our cert."""
    tls = config.tls
    settings = TlsClientSettings(
        server_name=server.hostname,
        ca=config.path(tls.ca_file) if tls.ca_file else None,
        cert=config.path(tls.client_cert) if tls.client_cert else None,
        key=config.path(tls.client_key) if tls.client_key else None,
    )
    host, port = server.hostport()
    if server.transport == "doh":
        # The URL names the address, never a name: the agent must not need DNS to reach its resolvers.
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return DohUpstream(f"https://{authority}{server.path}", settings)
    return DotUpstream(host, port, settings)


def gate_for(config: AgentConfig, server: ServerConfig) -> AttestationGate | None:
    """The attestation check of a server with ``require_attestation``: its report is fetched with the same CA,
    name check and client certificate as its queries."""
    if server.require_attestation is None:
        return None
    tls = config.tls
    context = ssl.create_default_context(cafile=str(config.path(tls.ca_file)) if tls.ca_file else None)
    if tls.client_cert:
        context.load_cert_chain(config.path(tls.client_cert), config.path(tls.client_key))
    url = AttestationGate.default_url(*server.hostport())
    return AttestationGate(server.require_attestation, url, context, server.hostname, config.base_dir)


@dataclass
class ServerState:
    config: ServerConfig
    client: DotUpstream | DohUpstream
    gate: AttestationGate | None = None
    down_until: float = 0.0
    hold_down: float = _HOLD_DOWN[0]
    last_error: str = ""


class Upstreams:
    """Sends a query to the first healthy server; on failure to the next, within one time budget."""

    def __init__(self, config: AgentConfig) -> None:
        self._timeout = config.stub.timeout
        self.servers = [
            ServerState(server, client_for(config, server), gate_for(config, server)) for server in config.server
        ]
        self._closing: set[asyncio.Task[None]] = set()

    async def query(self, wire: bytes) -> bytes:
        """The response to ``wire`` (its message ID restored) or :class:`UpstreamError`."""
        deadline = time.monotonic() + self._timeout
        now = time.monotonic()
        # Healthy servers in configured order first, then held-down ones: better a slow try than none.
        order = sorted(self.servers, key=lambda s: s.down_until > now)
        errors = []
        for index, server in enumerate(order):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Leave the later servers a share of the budget.
            budget = remaining / max(1, min(2, len(order) - index))
            if server.gate is not None and not await server.gate.allows():
                errors.append(f"{server.config.address}: {server.gate.reason}")
                continue
            try:
                response = await server.client.query(wire, budget)
            except (encrypted.UpstreamError, OSError, TimeoutError, ssl.SSLError) as exc:
                self._failed(server, exc)
                errors.append(f"{server.config.address}: {server.last_error}")
                continue
            server.down_until = 0.0
            server.hold_down = _HOLD_DOWN[0]
            return response
        raise UpstreamError("; ".join(errors) or "no time left")

    def _failed(self, server: ServerState, exc: BaseException) -> None:
        server.last_error = str(exc) or type(exc).__name__
        server.down_until = time.monotonic() + server.hold_down
        server.hold_down = min(server.hold_down * 2, _HOLD_DOWN[1])
        if server.gate is not None:
            server.gate.reconnected()
        # Drop the connection: after a timeout it may be dead without either side knowing. The next query
        # to this server connects afresh.
        task = asyncio.get_running_loop().create_task(server.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.warning("protective server %s failed: %s", server.config.address, server.last_error)

    async def close(self) -> None:
        for server in self.servers:
            await server.client.close()
