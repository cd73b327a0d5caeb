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
from pathlib import Path

from ztdns.attest.gate import AttestationGate
from ztdns.config.agent import AgentConfig, ServerConfig
from ztdns.resolver import encrypted
from ztdns.resolver.encrypted import DohUpstream, DotUpstream, TlsClientSettings

log = logging.getLogger("ztdns.agent.upstream")

_HOLD_DOWN = (1.0, 30.0)  # first and longest hold-down after a failure, seconds


class UpstreamError(Exception):
    """No protective server answered."""


def client_for(
    config: AgentConfig, server: ServerConfig, certificate: tuple[Path, Path] | None = None
) -> DotUpstream | DohUpstream:
    """The client for one configured server: verified against ``tls.ca_file`` and ``hostname``, with our cert
    (``certificate``: a workload's (cert, key) instead of the host's)."""
    tls = config.tls
    if certificate is None and tls.client_cert:
        certificate = (config.path(tls.client_cert), config.path(tls.client_key))
    settings = TlsClientSettings(
        server_name=server.hostname,
        ca=config.path(tls.ca_file) if tls.ca_file else None,
        cert=certificate[0] if certificate else None,
        key=certificate[1] if certificate else None,
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

    def __init__(self, config: AgentConfig, certificate: tuple[Path, Path] | None = None) -> None:
        self._config = config
        self._certificate = certificate
        self._timeout = config.stub.timeout
        self.servers = self._states(config)
        self._closing: set[asyncio.Task[None]] = set()
        self._files = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        files = self._certificate or ()
        try:
            return tuple(path.stat().st_mtime_ns for path in files)
        except OSError:
            return ()

    def reload_if_changed(self) -> bool:
        """New connections with the certificate files as they are now, if they changed on disk (a rotated SVID,
        as SPIFFE helpers write them); queries under way finish on the old connections."""
        stamp = self._stamp()
        if not stamp or stamp == self._files:
            return False
        self._files = stamp
        for server in self.servers:
            old, server.client = server.client, client_for(self._config, server.config, self._certificate)
            self._close_later(old)
        return True

    def reconfigure(self, config: AgentConfig) -> None:
        """The servers and TLS settings of ``config`` (a bundle from the control plane): new queries go to them;
        queries under way finish on the old connections."""
        old, self._config = self.servers, config
        self.servers = self._states(config)
        for server in old:
            self._close_later(server.client)

    def _states(self, config: AgentConfig) -> list[ServerState]:
        return [
            ServerState(server, client_for(config, server, self._certificate), gate_for(config, server))
            for server in config.server
        ]

    def _close_later(self, client: DotUpstream | DohUpstream) -> None:
        task = asyncio.get_running_loop().create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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
        self._close_later(server.client)
        log.warning("protective server %s failed: %s", server.config.address, server.last_error)

    async def close(self) -> None:
        for server in self.servers:
            await server.client.close()
