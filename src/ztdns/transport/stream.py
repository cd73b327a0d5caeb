"""TLS over TCP listeners (DoT and DoH share this): accept, handshake with the current TLS material, hand
over.

We accept TCP connections ourselves and hand each socket to ``loop.connect_accepted_socket`` with the
material's context *of that moment*, so certificate rotation affects new connections only. (Accepting with
``create_server`` and upgrading with ``start_tls`` loses the ClientHello under uvloop whenever it arrives
before the upgrade: uvloop starts reading right after ``connection_made`` even if the protocol paused, and
the stalled handshake then times out.) TLS runs through memory BIOs in :mod:`ztdns.transport.tlsbio`, not the
event loop's SSL transport (uvloop's grew the heap under connection churn, and neither sends the alert of a
refused handshake); it is non-blocking (a slow or stalled client costs a pending task, not a stalled loop) and
the handshake is bounded by ``handshake_timeout``. A refused handshake sends its TLS alert and is logged with its
reason (expired, unknown CA, revoked, no certificate). After the
handshake the connection protocol (DoT framing or HTTP) gets ``connection_made`` and builds its
:class:`ClientInfo`, with the identity of the verified client certificate.

What one client may hold (:mod:`ztdns.transport.limits`): ``max_connections_per_client`` per address (handshakes
included), or per certificate identity once the handshake proved one; a message must arrive whole within
``query_timeout`` of its first byte (subclasses report progress with ``progress.fed``); a connection whose
answers stay unread for ``idle_timeout`` is cut, and so are the biggest holders when the listener's unread
answers pass ``max_buffered_bytes``.
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
from ztdns.config.listen import ListenConfig
from ztdns.identity.certificates import identity_from_certificate
from ztdns.identity.sni import client_id_from_server_name
from ztdns.transport import Handler
from ztdns.transport.limits import ClientSlots, Progress, StreamProtocol, WriteBudget
from ztdns.transport.tls import RefusalLog, TlsMaterial, refusal_reason
from ztdns.transport.tlsbio import TlsBioProtocol

log = logging.getLogger(__name__)


class TlsConnection(StreamProtocol):
    """One established TLS connection. Subclasses speak the application protocol; this base knows the client,
    the listener it belongs to, idleness, and write back-pressure."""

    kind: Transport

    def __init__(self, listener: TlsStreamListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()  # looked up once: get_running_loop() makes a getpid() call each time
        self.handler = listener.handler
        self.config = listener.config
        self.transport: asyncio.Transport | None = None
        self.client = ClientInfo(self.kind, "", 0, None, stream=True)
        self.alpn: str | None = None
        self.last_activity = 0.0
        self.draining = False
        self.write_paused = False
        self.write_paused_at = 0.0
        # Progress of the message (query, HTTP request) being received: subclasses call progress.fed().
        self.progress = Progress()
        # The per-client slot this connection holds: its address until a certificate identity replaces it.
        self.slot: str | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        peer = transport.get_extra_info("peername") or ("", 0)
        identity = client_id = None
        if ssl_object is not None:
            client_id = client_id_from_server_name(ssl_object)
            der = ssl_object.getpeercert(binary_form=True)
            identity = identity_from_certificate(der, self.config.certificate_cn_identity) if der else None
            self.alpn = ssl_object.selected_alpn_protocol()
        self.client = ClientInfo(self.kind, peer[0], peer[1], identity, stream=True, client_id=client_id)
        self.last_activity = self.loop.time()
        self.listener.connections.add(self)
        if identity is not None:  # counted by who it proved to be, not by the address it came from
            self.release_slot()
            if not self.listener.slots.take(f"certificate {identity}"):
                self.abort()
                return
            self.slot = f"certificate {identity}"

    def data_received(self, data: bytes) -> None:
        self.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release_slot()
        self.listener.budget.unblock(self)
        self.listener.connection_gone(self)
        self.stopped()
        self.transport = None  # no cycle through the TLS layer: its buffers go now, not at a full collection

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions until it does (closed if it never
        # does: the listener's sweep, after idle_timeout).
        self.write_paused = True
        self.write_paused_at = self.loop.time()
        self.pause_reading_for_writes()
        self.listener.budget.block(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.listener.budget.unblock(self)
        self.resume_reading_if_possible()

    def release_slot(self) -> None:
        if self.slot is not None:
            self.listener.slots.give(self.slot)
            self.slot = None

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
        self.last_activity = self.loop.time()


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
        self.slots = ClientSlots(config.max_connections_per_client)
        self.budget = WriteBudget(config.max_buffered_bytes)
        # Handshakes that failed (bad certificate, timeout, not TLS); ``refusals.total`` counts them.
        self.refusals = RefusalLog(f"{config.transport} {config.address}")
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._empty = asyncio.Event()
        self._closing = False

    async def start(self, *, reuse_port: bool = False) -> None:
        host, port = self.config.hostport()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=1024, reuse_port=reuse_port)
        self._socket.setblocking(False)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._accept(self._socket)),
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

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as exc:
                # Out of descriptors or buffers: keep serving the connections we have, try again shortly.
                log.error("%s %s: accept failed: %s", self.config.transport, self.config.address, exc)
                await asyncio.sleep(0.1)
                continue
            self.accepted(sock, peer)

    def accepted(self, sock: socket.socket, peer: Any) -> None:
        if self._closing or len(self.connections) + len(self.handshakes) >= self.config.max_connections:
            sock.close()
            return
        if not self.slots.take(peer[0]):  # this address holds its share of connections already
            sock.close()
            return
        # Answers are small and latency-bound: do not let Nagle hold them back.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.get_running_loop().create_task(self._handshake(sock, peer))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: Any) -> None:
        connection = self.make_connection(self)
        connection.slot = peer[0]
        # TLS through memory BIOs (transport/tlsbio.py): flat memory under churn, and refusals send their alert.
        tls = TlsBioProtocol(self.material.current.context, connection, self.config.handshake_timeout)
        try:
            # TLS calls connection.connection_made once the handshake is done.
            await asyncio.get_running_loop().connect_accepted_socket(lambda: tls, sock)
            await tls.handshake
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            # The event loop has closed the socket.
            self.refusals.refused(refusal_reason(exc))  # the reason, never the peer: see observe/
        except asyncio.CancelledError:
            tls.abort()
            raise
        finally:
            if connection.transport is None:  # no connection came of it (refused, timed out, cancelled)
                connection.release_slot()

    def connection_gone(self, connection: TlsConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._empty.set()

    async def _sweep_idle(self) -> None:
        timeout = self.config.idle_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4, self.config.query_timeout / 4))
            self.refusals.flush()
            now = loop.time()
            cutoff = now - timeout
            for connection in [c for c in self.connections if c.last_activity < cutoff and not c.busy()]:
                connection.close()
            # A message trickling in (slowloris), or answers left unread for idle_timeout: the slot is wasted.
            query_timeout = self.config.query_timeout
            for connection in [
                c
                for c in self.connections
                if c.progress.overdue(now, query_timeout) or (c.write_paused and c.write_paused_at < cutoff)
            ]:
                connection.abort()

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting, let connections finish what is in flight for up to DRAIN_SECONDS, then cut them."""
        self._closing = True
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
        self.refusals.flush()  # what the last window suppressed, not lost at shutdown
        if self._socket is not None:
            self._socket.close()
