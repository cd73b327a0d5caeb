"""DNS over QUIC (RFC 9250) with aioquic: one query per client-initiated bidirectional stream.

Rules enforced (RFC 9250 section 4): a stream carries a 2-byte length then exactly one message, and the
message ID must be 0 — otherwise the connection is closed with DOQ_PROTOCOL_ERROR. A query the handler drops
resets its stream with DOQ_REQUEST_CANCELLED. Queries wait until the handshake is complete (and, with mTLS,
until the client certificate is verified), so 0-RTT data is never answered before we know who is asking.

mTLS: aioquic 1.x can ask for a client certificate but does not verify it (only its signature over the
handshake). We ask (through its private ``_request_client_certificate`` flag) and verify the chain ourselves
against the CA bundle and CRLs (:meth:`Generation.verify_client_chain`) when the client's Finished arrives,
inside the handshake: a refused client gets the TLS alert saying why (certificate_required, certificate_revoked,
unknown_ca, ...; QUIC CRYPTO_ERROR 0x100 + alert) as DoT and DoH clients do, and the reason is logged.
Rotation swaps the QUIC configuration used for new connections (aioquic keeps it in the server's private
``_configuration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import Alert, AlertDescription, pull_client_hello
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztdns.client import ClientInfo, Transport
from ztdns.config.listen import ListenConfig
from ztdns.identity.certificates import identity_from_certificate
from ztdns.identity.sni import client_id_of
from ztdns.transport import Handler
from ztdns.transport.dot import finish_response
from ztdns.transport.framing import frame
from ztdns.transport.tls import Generation, RefusalLog, TlsMaterial

log = logging.getLogger(__name__)

DOQ_NO_ERROR = 0x0
DOQ_INTERNAL_ERROR = 0x1
DOQ_PROTOCOL_ERROR = 0x2
DOQ_REQUEST_CANCELLED = 0x3
DOQ_EXCESSIVE_LOAD = 0x4


class _Refused(Alert):
    """A TLS alert with the description given (aioquic's Alert classes carry theirs as a class attribute)."""

    def __init__(self, description: AlertDescription) -> None:
        super().__init__()
        self.description = description


# OpenSSL's verification messages (Generation.verify_client_chain) and the alert each gets, as OpenSSL's own
# server sends them over TCP; any other failure: bad_certificate.
_ALERTS = (
    ("revoked", AlertDescription.certificate_revoked),
    ("expired", AlertDescription.certificate_expired),
    ("not yet valid", AlertDescription.bad_certificate),
    ("issuer certificate", AlertDescription.unknown_ca),
    ("not for client authentication", AlertDescription.unsupported_certificate),
)


def quic_configuration(generation: Generation, config: ListenConfig) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=["doq"],
        idle_timeout=config.idle_timeout,
        max_datagram_frame_size=None,
    )
    chain = x509.load_pem_x509_certificates(generation.cert_pem)
    configuration.certificate = chain[0]
    configuration.certificate_chain = chain[1:]
    configuration.private_key = serialization.load_pem_private_key(generation.key_pem, password=None)
    return configuration


class DoqConnection(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args: Any, listener: DoqListener, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.listener = listener
        self.generation = listener.material.current
        self.client: ClientInfo | None = None
        self.buffers: dict[int, bytearray] = {}
        self.waiting: list[tuple[int, bytes]] = []  # complete queries received before the handshake finished
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.identity: str | None = None  # from the client certificate, verified inside the handshake
        self.server_name: str | None = None  # the client hello's SNI: a claimed client id (ztdns.identity.sni)
        initialize_tls = quic._initialize

        def note_server_name(peer_cid: bytes) -> None:
            initialize_tls(peer_cid)
            tls = quic.tls
            handle_hello = tls._server_handle_hello

            def read_hello(input_buf: Any, *buffers: Any) -> None:
                start = input_buf.tell()
                with contextlib.suppress(Exception):  # a malformed hello: aioquic's own parse refuses it next
                    self.server_name = pull_client_hello(input_buf).server_name
                input_buf.seek(start)
                handle_hello(input_buf, *buffers)

            tls._server_handle_hello = read_hello  # type: ignore[method-assign, assignment]

        quic._initialize = note_server_name  # type: ignore[method-assign]
        if listener.config.client_auth != "off":
            initialize = quic._initialize

            def ask_for_client_certificate(peer_cid: bytes) -> None:
                initialize(peer_cid)
                tls = quic.tls
                tls._request_client_certificate = True
                handle_finished = tls._server_handle_finished

                def verify_then_finish(input_buf: Any, output_buf: Any) -> None:
                    self._verify_client(tls)  # raises the alert aioquic sends as CONNECTION_CLOSE (CRYPTO_ERROR)
                    handle_finished(input_buf, output_buf)

                tls._server_handle_finished = verify_then_finish  # type: ignore[method-assign]

            quic._initialize = ask_for_client_certificate  # type: ignore[method-assign]
        listener.connections.add(self)

    def _verify_client(self, tls: Any) -> None:
        """Called on the client's Finished, before the handshake completes (its CertificateVerify is checked by
        then): a refused client gets the TLS alert saying why, as over TCP, and never a connection."""
        peer: x509.Certificate | None = tls._peer_certificate
        if peer is None:
            if self.listener.config.client_auth == "require":
                self.listener.refusals.refused("no client certificate")
                raise _Refused(AlertDescription.certificate_required)
            return
        reason = self.generation.verify_client_chain(peer, list(tls._peer_certificate_chain))
        if reason is not None:
            self.listener.refusals.refused(f"client certificate refused: {reason}")
            alert = next((a for phrase, a in _ALERTS if phrase in reason), AlertDescription.bad_certificate)
            raise _Refused(alert)
        self.identity = identity_from_certificate(
            peer.public_bytes(serialization.Encoding.DER), self.listener.config.certificate_cn_identity
        )

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._data(event)
        elif isinstance(event, HandshakeCompleted):
            self._handshake_completed()
        elif isinstance(event, StreamReset):
            self.buffers.pop(event.stream_id, None)
            task = self.tasks.pop(event.stream_id, None)
            if task is not None:
                task.cancel()
        elif isinstance(event, ConnectionTerminated):
            for task in self.tasks.values():
                task.cancel()
            self.listener.connection_gone(self)

    def _handshake_completed(self) -> None:
        listener = self.listener
        if listener.draining or len(listener.connections) > listener.config.max_connections:
            self._close(DOQ_EXCESSIVE_LOAD, "too many connections")
            return
        address, port = self._transport_peer()
        client_id = client_id_of(self.server_name)
        self.client = ClientInfo(Transport.DOQ, address, port, self.identity, stream=True, client_id=client_id)
        waiting, self.waiting = self.waiting, []
        for stream_id, message in waiting:
            self._query(stream_id, message)

    def _transport_peer(self) -> tuple[str, int]:
        paths = self._quic._network_paths
        if paths:
            return str(paths[0].addr[0]), int(paths[0].addr[1])
        return "", 0

    def _refuse(self, reason: str) -> None:
        self.listener.refusals.refused(reason)
        self._close(DOQ_PROTOCOL_ERROR, reason)

    def _close(self, code: int, reason: str) -> None:
        self._quic.close(error_code=code, reason_phrase=reason)
        self.transmit()

    def _data(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        # Only client-initiated bidirectional streams carry queries (RFC 9250 section 4.2).
        if stream_id & 0x3:
            self._close(DOQ_PROTOCOL_ERROR, "query on a stream that is not client bidirectional")
            return
        buffer = self.buffers.setdefault(stream_id, bytearray())
        buffer += event.data
        if len(buffer) > 65537:
            self._close(DOQ_PROTOCOL_ERROR, "message longer than 65535")
            return
        if not event.end_stream:
            return
        del self.buffers[stream_id]
        if len(buffer) < 14 or int.from_bytes(buffer[:2], "big") != len(buffer) - 2:
            self._close(DOQ_PROTOCOL_ERROR, "stream does not hold exactly one length-prefixed message")
            return
        message = bytes(buffer[2:])
        if message[:2] != b"\x00\x00":
            self._close(DOQ_PROTOCOL_ERROR, "message ID is not 0")
            return
        if self.client is None:
            self.waiting.append((stream_id, message))
        else:
            self._query(stream_id, message)

    def _query(self, stream_id: int, message: bytes) -> None:
        assert self.client is not None
        response = self.listener.handler.fast(message, self.client)
        if response is not None:
            self._send(stream_id, message, response)
            return
        task = asyncio.get_running_loop().create_task(self._slow(stream_id, message, self.client))
        self.tasks[stream_id] = task
        task.add_done_callback(lambda _t: self._done(stream_id))

    async def _slow(self, stream_id: int, message: bytes, client: ClientInfo) -> None:
        response = await self.listener.handler.handle(message, client)
        self._send(stream_id, message, response)

    def _send(self, stream_id: int, query: bytes, response: bytes | None) -> None:
        if response is None:
            self._quic.reset_stream(stream_id, DOQ_REQUEST_CANCELLED)
        else:
            self._quic.send_stream_data(stream_id, frame(finish_response(query, response)), end_stream=True)
        self.transmit()

    def _done(self, stream_id: int) -> None:
        task = self.tasks.pop(stream_id, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("handler failed", exc_info=task.exception())
            self._quic.reset_stream(stream_id, DOQ_INTERNAL_ERROR)
            self.transmit()
        self.listener.maybe_drained()

    def busy(self) -> bool:
        return bool(self.tasks)

    def close_now(self) -> None:
        self._close(DOQ_NO_ERROR, "server shutting down")


class DoqListener:
    def __init__(self, config: ListenConfig, handler: Handler, material: TlsMaterial) -> None:
        self.config = config
        self.handler = handler
        self.material = material
        self.connections: set[DoqConnection] = set()
        self.refusals = RefusalLog(f"doq {config.address}")
        self.draining = False
        self._server: QuicServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()

    async def start(self) -> None:
        host, port = self.config.hostport()
        self._server = await serve(
            host,
            port,
            configuration=quic_configuration(self.material.current, self.config),
            create_protocol=lambda *args, **kwargs: DoqConnection(*args, listener=self, **kwargs),
        )
        self.material.on_change(self._rotate)
        self._watch = asyncio.get_running_loop().create_task(self.material.watch(self.config.tls_reload_interval))

    def _rotate(self, generation: Generation) -> None:
        if self._server is not None:
            self._server._configuration = quic_configuration(generation, self.config)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None and self._server._transport is not None
        sockname = self._server._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    def reload(self) -> bool:
        return self.material.reload(force=True)

    def connection_gone(self, connection: DoqConnection) -> None:
        self.connections.discard(connection)
        self.maybe_drained()

    def maybe_drained(self) -> None:
        if self.draining and not any(c.busy() for c in self.connections):
            self._drained.set()

    async def close(self, drain_seconds: float = 5.0) -> None:
        self.draining = True
        if self._watch is not None:
            self._watch.cancel()
        self.maybe_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), drain_seconds)
        for connection in list(self.connections):
            connection.close_now()
        if self._server is not None:
            self._server.close()


async def start_doq_listener(config: ListenConfig, handler: Handler, tls: TlsMaterial) -> DoqListener:
    """Listen for DoQ on UDP ``config.address``. Close with ``await listener.close(drain_seconds)``."""
    listener = DoqListener(config, handler, tls)
    await listener.start()
    return listener
