"""The stub resolver: the host's applications ask it, it asks the protective servers, opens the answered
addresses, and only then releases the answer.

:class:`StubHandler` is the logic (wire in, wire out); the UDP and TCP listeners below only move bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol, cast

from ztdns.agent.allowstate import AllowState
from ztdns.agent.answers import BadMessage, addresses, check_query, servfail, truncate, udp_limit
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.nft import NftError
from ztdns.agent.setwriter import SetWriter
from ztdns.agent.upstream import UpstreamError
from ztdns.config.model import parse_hostport

log = logging.getLogger("ztdns.agent.stub")


class Upstream(Protocol):
    async def query(self, wire: bytes) -> bytes:
        """The response to ``wire`` with its message ID, or UpstreamError."""
        ...


class StubHandler:
    def __init__(
        self,
        upstreams: Upstream,
        state: AllowState,
        writer: SetWriter,
        metrics: AgentMetrics,
        identity: str,
        on_error: Callable[[str], None],
    ) -> None:
        self._upstreams = upstreams
        self._state = state
        self._writer = writer
        self._metrics = metrics
        self._identity = identity
        self._on_error = on_error

    async def handle(self, query: bytes) -> bytes | None:
        """The response to release to the application, or None to drop a packet that is not a query."""
        try:
            check_query(query)
        except BadMessage as exc:
            log.debug("dropped: %s", exc)
            return None
        try:
            response = await self._upstreams.query(query)
        except UpstreamError as exc:
            self._metrics.upstream_failures.inc()
            self._metrics.servfail.inc()
            self._on_error(f"no protective server answered: {exc}")
            return servfail(query)
        started = time.perf_counter()
        try:
            answer = addresses(response)
        except BadMessage as exc:
            self._metrics.servfail.inc()
            self._on_error(f"bad upstream response: {exc}")
            return servfail(query)
        if answer.records:
            # Every answer of this event-loop turn goes into the same update: one transaction for all of them.
            update, committed = self._writer.pending()
            self._state.answer(answer.name, answer.records, time.time(), self._identity, update)
            try:
                await committed
            except NftError as exc:
                # Fail closed: the application must not get an address the firewall does not let it reach.
                self._metrics.set_failures.inc()
                self._metrics.servfail.inc()
                self._on_error(f"set update failed for {answer.name}: {exc}")
                return servfail(query)
            self._metrics.opened.inc()
        else:
            self._metrics.relayed.inc()
        self._metrics.plumbing.observe(time.perf_counter() - started)
        return response


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: StubHandler, tasks: set[asyncio.Task[None]]) -> None:
        self._handler = handler
        self._tasks = tasks
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport, though it is one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, query: bytes, addr: tuple[str | int, ...]) -> None:
        response = await self._handler.handle(query)
        if response is None or self._transport is None:
            return
        # Parsing the query's EDNS size only matters for responses that do not fit the classic 512 octets.
        if len(response) > 512 and len(response) > udp_limit(query):
            response = truncate(response)
        self._transport.sendto(response, addr)


async def _serve_tcp_connection(
    handler: StubHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_timeout: float
) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def answer(query: bytes) -> None:
        response = await handler.handle(query)
        if response is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(response)) + response)

    try:
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), idle_timeout))[0]
            query = await asyncio.wait_for(reader.readexactly(size), idle_timeout)
            task = asyncio.get_running_loop().create_task(answer(query))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()


_SO_RCVBUFFORCE = 33
_RECEIVE_BUFFER = 4 << 20


def _large_receive_buffer(sock: socket.socket | None) -> None:
    """Room for bursts: the default buffer (≈ 200 KiB) holds only ≈ 300 queries, a 30 ms stall at 10k names/s
    (datagrams beyond it are dropped by the kernel and the application retries a second later)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)  # beyond rmem_max: CAP_NET_ADMIN
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)


class StubListeners:
    """UDP and TCP on every configured address."""

    def __init__(self, handler: StubHandler, listen: list[str], idle_timeout: float = 30.0) -> None:
        self._handler = handler
        self._listen = listen
        self._idle_timeout = idle_timeout
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self._listen:
            host, port = parse_hostport(address, 53)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self._handler, self._tasks), local_addr=(host, port)
            )
            _large_receive_buffer(transport.get_extra_info("socket"))
            self._transports.append(transport)
            server = await asyncio.start_server(
                lambda r, w: _serve_tcp_connection(self._handler, r, w, self._idle_timeout), host, port
            )
            self._servers.append(server)

    async def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
