"""DoT client (RFC 7858) to the protective resolvers: one reused TLS connection per server, queries pipelined on
it (each gets a connection-unique message ID, restored on the way back), failover in configured order with a
short hold-down for servers that failed. The agent resolves no other way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import struct
import time
from dataclasses import dataclass

from ztdns.agent.answers import message_id, with_id
from ztdns.agent.config import AgentConfig, ServerConfig

log = logging.getLogger("ztdns.agent.upstream")

_HOLD_DOWN = (1.0, 30.0)  # first and longest hold-down after a failure, seconds


class UpstreamError(Exception):
    """No protective server answered."""


def client_context(config: AgentConfig) -> ssl.SSLContext:
    """TLS 1.2+ with server verification against the configured CA and, if configured, our client certificate."""
    tls = config.tls
    context = ssl.create_default_context(cafile=str(config.path(tls.ca_file)) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_cert:
        context.load_cert_chain(str(config.path(tls.client_cert)), str(config.path(tls.client_key)))
    return context


class DotConnection:
    """One TLS connection carrying many in-flight queries."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.cycle(range(65536))
        self._reading = asyncio.get_running_loop().create_task(self._read_loop())
        self.closed = False

    @classmethod
    async def open(cls, server: ServerConfig, context: ssl.SSLContext, timeout: float) -> DotConnection:
        host, port = server.hostport()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=server.hostname), timeout
        )
        return cls(reader, writer)

    async def query(self, wire: bytes) -> bytes:
        if self.closed:
            raise ConnectionError("connection closed")
        if len(self._pending) >= 65535:
            raise ConnectionError("too many queries in flight")
        ident = next(self._ids)
        while ident in self._pending:
            ident = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self._writer.write(struct.pack("!H", len(wire)) + with_id(wire, ident))
            return await future
        finally:
            self._pending.pop(ident, None)

    async def _read_loop(self) -> None:
        error: BaseException = ConnectionError("server closed the connection")
        try:
            while True:
                size = struct.unpack("!H", await self._reader.readexactly(2))[0]
                data = await self._reader.readexactly(size)
                if size < 2:
                    continue
                future = self._pending.get(message_id(data))
                if future is not None and not future.done():
                    future.set_result(data)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            error = exc
        finally:
            self.closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(str(error) or type(error).__name__))
            self._writer.close()

    async def close(self) -> None:
        self.closed = True
        self._reading.cancel()
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


@dataclass
class ServerState:
    config: ServerConfig
    connection: DotConnection | None = None
    connecting: asyncio.Lock | None = None
    down_until: float = 0.0
    hold_down: float = _HOLD_DOWN[0]
    last_error: str = ""


class Upstreams:
    """Sends a query to the first healthy server; on failure to the next, within one time budget."""

    def __init__(self, config: AgentConfig) -> None:
        self._context = client_context(config)
        self._timeout = config.stub.timeout
        self.servers = [ServerState(server) for server in config.server]
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
            try:
                response = await asyncio.wait_for(self._ask(server, wire), budget)
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                self._failed(server, exc)
                errors.append(f"{server.config.address}: {server.last_error}")
                continue
            server.down_until = 0.0
            server.hold_down = _HOLD_DOWN[0]
            return with_id(response, message_id(wire))
        raise UpstreamError("; ".join(errors) or "no time left")

    async def _ask(self, server: ServerState, wire: bytes) -> bytes:
        reused = server.connection is not None and not server.connection.closed
        connection = await self._connection(server)
        try:
            return await connection.query(wire)
        except ConnectionError:
            if not reused:
                raise
        # The server closed an idle connection as we wrote to it: one retry on a fresh one is not a failure.
        connection = await self._connection(server)
        return await connection.query(wire)

    async def _connection(self, server: ServerState) -> DotConnection:
        if server.connection is not None and not server.connection.closed:
            return server.connection
        if server.connecting is None:
            server.connecting = asyncio.Lock()
        async with server.connecting:
            if server.connection is None or server.connection.closed:
                server.connection = await DotConnection.open(server.config, self._context, self._timeout)
            return server.connection

    def _failed(self, server: ServerState, exc: BaseException) -> None:
        server.last_error = str(exc) or type(exc).__name__
        server.down_until = time.monotonic() + server.hold_down
        server.hold_down = min(server.hold_down * 2, _HOLD_DOWN[1])
        if server.connection is not None:
            connection, server.connection = server.connection, None
            task = asyncio.get_running_loop().create_task(connection.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        log.warning("protective server %s failed: %s", server.config.address, server.last_error)

    async def close(self) -> None:
        for server in self.servers:
            if server.connection is not None:
                await server.connection.close()
                server.connection = None
