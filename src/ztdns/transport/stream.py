"""TLS over TCP listeners (DoT and DoH share this): accept, handshake with the current TLS material, hand over.

Each accepted TCP socket is handed to ``loop.connect_accepted_socket`` with the material's context *of that moment*,
so certificate rotation affects new connections only. The handshake runs in the event loop's non-blocking SSL
machinery (a slow or stalled client costs a pending task, not a stalled loop) and is bounded by
``handshake_timeout``. (Not ``loop.start_tls`` on an accepted plain transport: uvloop starts reading such a
transport right after ``connection_made``, whatever the protocol asked, and a ClientHello read before ``start_tls``
took over was lost — the handshake then hung until the client gave up.) A refused handshake is logged with its
reason (expired, unknown CA, revoked, no certificate). After the handshake the connection protocol (DoT framing or
HTTP) gets ``connection_made`` and builds its :class:`ClientInfo`, with the identity of the verified client
certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

from ztdns.client import ClientInfo, Transport
from ztdns.config.model import ListenConfig
from ztdns.identity.certificates import identity_from_certificate
from ztdns.transport import Handler
from ztdns.transport.tls import TlsMaterial, refusal_reason

log = logging.getLogger(__name__)


class TlsConnection(asyncio.Protocol):
    """One established TLS connection. Subclasses speak the application protocol; this base knows the client,
    the listener it belongs to, idleness, and write back-pressure."""

    kind: Transport

    def __init__(self, listener: TlsStreamListener) -> None:
        self.listener = listener
        self.handler = listener.handler
        self.config = listener.config
        self.transport: asyncio.Transport | None = None
        self.client = ClientInfo(self.kind, "", 0, None, stream=True)
        self.alpn: str | None = None
        self.last_activity = 0.0
        self.draining = False
        self.write_paused = False
        # start_tls may deliver the first application data before it returns to us; hold it until then.
        self._early: list[bytes] | None = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        peer = transport.get_extra_info("peername") or ("", 0)
        identity = None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            identity = identity_from_certificate(der) if der else None
            self.alpn = ssl_object.selected_alpn_protocol()
        self.client = ClientInfo(self.kind, peer[0], peer[1], identity, stream=True)
        self.last_activity = asyncio.get_running_loop().time()
        self.listener.connections.add(self)
        self.listener.handshaking.discard(self)
        early, self._early = self._early or [], None
        for data in early:
            self.received(data)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
        else:
            self.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connection_gone(self)
        self.stopped()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions until it does.
        self.write_paused = True
        self.pause_reading_for_writes()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume_reading_if_possible()

    # For subclasses

    def received(self, data: bytes) -> None:
        """Application bytes from the client, in order, once ``self.client`` is known."""
        raise NotImplementedError

    def stopped(self) -> None:
        """Called when the connection is gone: cancel what is in flight."""

    def busy(self) -> bool:
        """True while queries are in flight (an idle timeout must not cut them)."""
        return False

    def drain(self) -> None:
        """Stop taking new queries; close once the ones in flight are answered."""
        raise NotImplementedError

    def pause_reading_for_writes(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading_if_possible(self) -> None:
        if self.transport is not None and not self.draining:
            self.transport.resume_reading()

    def touch(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class TlsStreamListener:
    """A DoT or DoH listener, made by ``start_dot_listener`` or ``start_doh_listener``."""

    def __init__(
        self,
        config: ListenConfig,
        handler: Handler,
        material: TlsMaterial,
        make_connection: Callable[[TlsStreamListener], TlsConnection],
    ) -> None:
        self.config = config
        self.handler = handler
        self.material = material
        self.make_connection = make_connection
        self.connections: set[TlsConnection] = set()
        self.handshakes: set[asyncio.Task[None]] = set()
        # Connections whose handshake is under way (counted against max_connections until made or refused).
        self.handshaking: set[TlsConnection] = set()
        self.refused = 0  # handshakes that failed (bad certificate, timeout, not TLS)
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._empty = asyncio.Event()
        self._closing = False

    async def start(self, *, reuse_port: bool = False) -> None:
        host, port = self.config.hostport()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        loop.add_reader(sock.fileno(), self._accept)
        self._tasks = [
            loop.create_task(self.material.watch(self.config.tls_reload_interval)),
            loop.create_task(self._sweep_idle()),
        ]

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when the config said port 0)."""
        assert self._socket is not None
        sockname: Any = self._socket.getsockname()
        return sockname[0], sockname[1]

    def reload(self) -> bool:
        """Re-read the TLS files now (the server calls this on SIGHUP)."""
        return self.material.reload(force=True)

    def _accept(self) -> None:
        assert self._socket is not None
        while True:
            try:
                conn, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: leave the rest in the backlog for the next round
                log.warning("%s %s: accept failed: %s", self.config.transport, self.config.address, exc)
                return
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        if self._closing or len(self.connections) + len(self.handshaking) >= self.config.max_connections:
            conn.close()
            return
        conn.setblocking(False)
        # Answers are small and latency-bound: do not let Nagle hold them back.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.get_running_loop().create_task(self._handshake(conn))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        connection = self.make_connection(self)
        self.handshaking.add(connection)
        try:
            peer = conn.getpeername()
        except OSError:
            peer = None
        try:
            # The connection's connection_made runs once the handshake is done, with the TLS transport.
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: connection,
                conn,
                ssl=self.material.current.context,
                ssl_handshake_timeout=self.config.handshake_timeout,
            )
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            self.handshaking.discard(connection)
            self.refused += 1
            log.warning(
                "%s %s: handshake refused: %s",
                self.config.transport,
                self.config.address,
                refusal_reason(exc),
            )
            log.debug("refused handshake came from %s", peer)
            with contextlib.suppress(OSError):
                conn.close()

    def connection_gone(self, connection: TlsConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._empty.set()

    async def _sweep_idle(self) -> None:
        timeout = self.config.idle_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            cutoff = loop.time() - timeout
            for connection in [c for c in self.connections if c.last_activity < cutoff and not c.busy()]:
                connection.close()

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting, let connections finish what is in flight for up to DRAIN_SECONDS, then cut them."""
        self._closing = True
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
        for task in self._tasks:
            task.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self._empty.clear()
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), drain_seconds)
        for connection in list(self.connections):
            connection.abort()
        await asyncio.gather(*self._tasks, *self.handshakes, return_exceptions=True)
