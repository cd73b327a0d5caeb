"""Do53 over TCP (RFC 7766): length-prefixed messages, pipelined, answered out of order as they complete.

Each connection has an idle timeout (closed when no whole query arrives and nothing is pending), a query timeout
(a query must arrive whole within ``query_timeout`` of its first byte), a bound on queries in flight (reading
pauses above it) and write back-pressure (reading pauses while the client leaves its answers unread; closed if it
stays so for ``idle_timeout``). The listener bounds connections in all and per client address, and the unread
answers of all connections together (:mod:`ztdns.transport.limits`). A handler that
answers some requests with several messages (a zone transfer) implements ``respond_all``
(:class:`~ztdns.transport.MultiResponseHandler`); its messages are written in order, one at a time as the
client reads them (a streamed transfer waits while writing is paused), and any other answer for the same
connection is held until the last message is out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import cast

from ztdns.client import ClientInfo, Transport
from ztdns.config.listen import ListenConfig
from ztdns.transport import Handler, MultiResponseHandler
from ztdns.transport.framing import FramingError, LengthPrefixedFramer, frame
from ztdns.transport.limits import ClientSlots, Progress, StreamProtocol, WriteBudget

log = logging.getLogger(__name__)


class TcpConnection(StreamProtocol):
    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client: ClientInfo | None = None
        self.framer = LengthPrefixedFramer()
        self.progress = Progress()
        self.pending: set[asyncio.Task[None]] = set()
        self.paused = False  # reading paused: max_pipelined queries in flight
        self.write_paused = False  # reading paused: the client does not read its answers
        self.idle: asyncio.TimerHandle | None = None
        self.partial: asyncio.TimerHandle | None = None
        # A multi-message answer being written: one at a time, and other answers wait in ``held``.
        self.streaming = asyncio.Lock()
        self.held: list[bytes] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        # A connection reset before we got here has no peer address any more: nothing to serve.
        peer = transport.get_extra_info("peername")
        if not peer or len(server.connections) >= server.config.max_connections or not server.slots.take(peer[0]):
            self.transport.abort()
            server.refused += 1
            return
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = ClientInfo(Transport.TCP, peer[0], peer[1], stream=True)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.config.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if self.pending and not self.write_paused:
            self._arm_idle()
            return
        if self.write_paused:  # its answers unread for idle_timeout: what is buffered for it is dropped
            self.abort()
        else:
            self.close()

    def _partial_expired(self) -> None:
        self.partial = None
        self.abort()  # a query trickling in (slowloris) is not progress

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.client is not None
        try:
            messages = self.framer.feed(data)
        except FramingError:  # the stream is out of sync: nothing after this can be trusted
            self.transport.abort()
            return
        self._track_progress(len(messages))
        handler = self.server.handler
        for wire in messages:
            answer = handler.fast(wire, self.client)
            if answer is not None:
                self._send(answer)
                continue
            task = asyncio.get_running_loop().create_task(self._answer(wire))
            self.pending.add(task)
            task.add_done_callback(self._done)
            if len(self.pending) >= self.server.config.max_pipelined and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def _track_progress(self, completed: int) -> None:
        loop = asyncio.get_running_loop()
        started = self.progress.started
        self.progress.fed(loop.time(), completed, self.framer.buffered)
        if completed:
            self._arm_idle()
        if self.progress.started != started or self.progress.started is None:
            if self.partial is not None:
                self.partial.cancel()
                self.partial = None
            if self.progress.started is not None:
                self.partial = loop.call_later(self.server.config.query_timeout, self._partial_expired)

    async def _answer(self, wire: bytes) -> None:
        assert self.client is not None
        respond_all = self.server.respond_all
        if respond_all is not None:
            messages = await respond_all(wire, self.client)
            if isinstance(messages, list) and len(messages) <= 1:
                for message in messages:
                    self._send(message)
                return
            async with self.streaming:
                await self._stream(messages)
            return
        answer = await self.server.handler.handle(wire, self.client)
        if answer is not None:
            self._send(answer)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if self.paused and len(self.pending) < self.server.config.max_pipelined and self.transport is not None:
            self.paused = False
            if not self.write_paused:
                self.transport.resume_reading()

    async def _stream(self, messages: Iterable[bytes]) -> None:
        """Write a multi-message answer in order, waiting while the client does not read (so a large transfer is
        never buffered whole); answers to other queries of this connection are held until it is done."""
        self.held = []
        try:
            for message in messages:
                self._write(message)
                if self.transport is None:
                    return
                if self.write_paused:
                    await self.writable.wait()
                else:
                    await asyncio.sleep(0)  # let other connections and the ticker run between messages
        finally:
            held, self.held = self.held, None
            for answer in held:
                self._send(answer)

    def _send(self, answer: bytes) -> None:
        if self.held is not None:
            self.held.append(answer)
            return
        self._write(answer)

    def _write(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(answer))

    # Write back-pressure: the transport calls these around its high-water mark.

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.write_paused = True
        self.writable.clear()
        self.transport.pause_reading()
        self._arm_idle()  # answers unread for idle_timeout: closed
        self.server.budget.block(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.set()
        self.server.budget.unblock(self)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.discard(self)
            assert self.client is not None
            self.server.slots.give(self.client.address)
        self.server.budget.unblock(self)
        for timer in (self.idle, self.partial):
            if timer is not None:
                timer.cancel()
        for task in self.pending:
            task.cancel()
        self.transport = None
        self.writable.set()


class TcpServer:
    def __init__(self, config: ListenConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self.respond_all = handler.respond_all if isinstance(handler, MultiResponseHandler) else None
        self.connections: set[TcpConnection] = set()
        self.slots = ClientSlots(config.max_connections_per_client)
        self.budget = WriteBudget(config.max_buffered_bytes)
        self.refused = 0
        self.server: asyncio.Server | None = None

    async def start(self, reuse_port: bool) -> None:
        host, port = self.config.hostport()
        self.server = await asyncio.get_running_loop().create_server(
            lambda: TcpConnection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port chosen when the config says port 0)."""
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, timeout: float) -> None:
        """Let pending answers go out, then close every connection."""
        pending = [task for connection in self.connections for task in connection.pending]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
