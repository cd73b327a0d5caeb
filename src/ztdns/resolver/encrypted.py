"""Encrypted upstream clients for the forwarder: DoT, DoH (HTTP/2) and DoQ, each with connection reuse.

Every client verifies the server certificate against ``ca`` (or the system store) and ``server_name``,
optionally checks an SPKI pin (base64 SHA-256 of the server's SubjectPublicKeyInfo, RFC 7858 section 4.2),
and can present a client certificate of our own (chaining ztdns resolvers with mTLS identities). Each has
``async query(wire, timeout) -> bytes`` and ``async close()``.

One connection per upstream is kept open and shared by concurrent queries: DoT pipelines (message IDs are
remapped so concurrent queries with equal IDs cannot be confused), DoH multiplexes HTTP/2 streams, DoQ opens a
stream per query. A broken connection is dropped and the next query reconnects. dnspython's DoH client needs
httpx, which we do not depend on; h2 is enough for this.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztdns.pki.pin import spki_pin
from ztdns.transport.framing import LengthPrefixedFramer, frame


class UpstreamError(Exception):
    """The upstream could not be reached, failed verification, or answered with something unusable.
    Timeouts are not wrapped: ``query`` lets ``TimeoutError`` through so callers can tell the two apart."""


class ConnectionClosed(UpstreamError):
    """The connection closed while a query waited on it (servers close idle connections when they like)."""


async def _with_one_retry(exchange: Callable[[], Awaitable[bytes]], connected: Callable[[], bool]) -> bytes:
    """``exchange()``, retried once on a fresh connection if a reused one turned out to be closed.

    A server may close an idle connection just as we write to it (RFC 7766 section 6.2.3 lets DoT servers do
    so; HTTP/2 servers send GOAWAY): that is not a failure of the server, and DNS queries are safe to repeat.
    """
    reused = connected()
    try:
        return await exchange()
    except ConnectionClosed:
        if not reused:
            raise
    return await exchange()


@dataclass(frozen=True)
class TlsClientSettings:
    server_name: str | None = None  # name to verify; None → the address
    ca: Path | None = None  # None → the system trust store
    spki_pin: str | None = None  # base64(sha256(SubjectPublicKeyInfo DER))
    cert: Path | None = None  # our client certificate (mTLS), with key
    key: Path | None = None

    def context(self, alpn: list[str]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(alpn)
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


def describe(exc: BaseException) -> str:
    """What went wrong, short enough for an EDE EXTRA-TEXT: the verification failure rather than OpenSSL's
    bracketed codes."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"TLS error: {exc.reason.lower().replace('_', ' ')}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _check_pin(settings: TlsClientSettings, certificate_der: bytes | None) -> None:
    if settings.spki_pin is not None and (certificate_der is None or spki_pin(certificate_der) != settings.spki_pin):
        raise UpstreamError("server certificate does not match the SPKI pin")


def _with_id(wire: bytes, message_id: int) -> bytes:
    return struct.pack(">H", message_id) + wire[2:]


class _OneStream:
    """What the DoT and DoH upstreams share: one reused TLS stream, and the task that reads answers from it."""

    _writer: asyncio.StreamWriter | None
    _reader_task: asyncio.Task[None] | None

    def _connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # Failures of the stream that mean "this upstream did not answer" (the caller tries another).
    _stream_errors: tuple[type[BaseException], ...] = (OSError, ssl.SSLError)

    async def _exchange(self, wire: bytes) -> bytes:
        """Send one query on the (possibly new) connection and wait for its answer."""
        raise NotImplementedError

    async def query(self, wire: bytes, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                response = await _with_one_retry(lambda: self._exchange(wire), self._connected)
        except TimeoutError:
            raise
        except self._stream_errors as exc:
            raise UpstreamError(describe(exc)) from exc
        if len(response) < 12:
            raise UpstreamError("short DNS message")
        return wire[:2] + response[2:]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


class DotUpstream(_OneStream):
    def __init__(self, host: str, port: int = 853, tls: TlsClientSettings | None = None) -> None:
        self.host, self.port = host, port
        self.tls = tls or TlsClientSettings()
        self._context = self.tls.context(["dot"])
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._connecting = asyncio.Lock()

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._context, server_hostname=self.tls.server_name or self.host
            )
            try:
                _check_pin(self.tls, writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            except UpstreamError:
                writer.close()
                raise
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = LengthPrefixedFramer()
        try:
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    future = self._pending.pop(int.from_bytes(message[:2], "big"), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (OSError, ValueError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionClosed("connection closed"))
            self._pending.clear()

    async def _exchange(self, wire: bytes) -> bytes:
        writer = await self._connection()
        while self._next_id in self._pending:
            self._next_id = (self._next_id + 1) & 0xFFFF
        local_id, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFF
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[local_id] = future
        try:
            writer.write(frame(_with_id(wire, local_id)))
            return await future
        finally:
            self._pending.pop(local_id, None)


class DohUpstream(_OneStream):
    """RFC 8484 POST over one HTTP/2 connection; the message ID is sent as 0 for cache friendliness."""

    _stream_errors = (OSError, ssl.SSLError, h2.exceptions.ProtocolError)

    def __init__(self, url: str, tls: TlsClientSettings | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url!r} is not an https:// URL")
        self.host, self.port = parts.hostname, parts.port or 443
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.tls = tls or TlsClientSettings()
        # The HTTP authority names the server we verify (virtual hosting), not the address we dial.
        name = self.tls.server_name
        self.authority = parts.netloc if name is None else name if self.port == 443 else f"{name}:{self.port}"
        self._context = self.tls.context(["h2"])
        self._conn: h2.connection.H2Connection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._streams: dict[int, tuple[asyncio.Future[bytes], bytearray, list[int]]] = {}
        self._connecting = asyncio.Lock()

    async def _connection(self) -> tuple[h2.connection.H2Connection, asyncio.StreamWriter]:
        async with self._connecting:
            if self._conn is not None and self._writer is not None and not self._writer.is_closing():
                return self._conn, self._writer
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._context, server_hostname=self.tls.server_name or self.host
            )
            ssl_object = writer.get_extra_info("ssl_object")
            try:
                _check_pin(self.tls, ssl_object.getpeercert(binary_form=True))
                if ssl_object.selected_alpn_protocol() != "h2":
                    raise UpstreamError("does not speak HTTP/2 (ALPN h2)")
            except UpstreamError:
                writer.close()
                raise
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            self._conn, self._writer = conn, writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(conn, reader, writer))
            return conn, writer

    async def _read(
        self, conn: h2.connection.H2Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    self._event(conn, event)
                writer.write(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._conn = self._writer = None
            for future, _, _ in self._streams.values():
                if not future.done():
                    future.set_exception(ConnectionClosed("connection closed"))
            self._streams.clear()

    def _event(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", -1) or -1)
        if stream is None:
            return
        future, body, status = stream
        if isinstance(event, h2.events.ResponseReceived):
            status.append(int(dict(event.headers or ())[b":status"]))
        elif isinstance(event, h2.events.DataReceived):
            body += event.data or b""
            conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and not future.done():
            if status == [200] and isinstance(event, h2.events.StreamEnded):
                future.set_result(bytes(body))
            else:
                future.set_exception(UpstreamError(f"HTTP status {status[0] if status else 'missing (stream reset)'}"))

    async def _exchange(self, wire: bytes) -> bytes:
        conn, writer = await self._connection()
        stream_id = conn.get_next_available_stream_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._streams[stream_id] = (future, bytearray(), [])
        body = _with_id(wire, 0)
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", self.authority),
                (":path", self.path),
                ("content-type", "application/dns-message"),
                ("accept", "application/dns-message"),
                ("content-length", str(len(body))),
            ],
        )
        conn.send_data(stream_id, body, end_stream=True)
        writer.write(conn.data_to_send())
        try:
            return await future
        finally:
            self._streams.pop(stream_id, None)


class _DoqClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: dict[int, tuple[asyncio.Future[bytes], bytearray]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            entry = self.answers.get(event.stream_id)
            if entry is not None:
                entry[1].extend(event.data)
                if event.end_stream and not entry[0].done():
                    entry[0].set_result(bytes(entry[1]))
        elif isinstance(event, StreamReset):
            entry = self.answers.get(event.stream_id)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(UpstreamError(f"DoQ stream reset (error {event.error_code})"))
        elif isinstance(event, ConnectionTerminated):
            for future, _ in self.answers.values():
                if not future.done():
                    future.set_exception(UpstreamError(f"DoQ connection closed: {event.reason_phrase}"))

    async def ask(self, wire: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.answers[stream_id] = (future, bytearray())
        try:
            self._quic.send_stream_data(stream_id, frame(wire), end_stream=True)
            self.transmit()
            return await future
        finally:
            self.answers.pop(stream_id, None)


class DoqUpstream:
    def __init__(self, host: str, port: int = 853, tls: TlsClientSettings | None = None) -> None:
        self.host, self.port = host, port
        self.tls = tls or TlsClientSettings()
        self._configuration = QuicConfiguration(is_client=True, alpn_protocols=["doq"], idle_timeout=30.0)
        self._configuration.server_name = self.tls.server_name or host
        if self.tls.ca is not None:
            self._configuration.load_verify_locations(cafile=str(self.tls.ca))
        if self.tls.cert is not None:
            self._configuration.load_cert_chain(self.tls.cert, self.tls.key)
        self._protocol: _DoqClientProtocol | None = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._connecting = asyncio.Lock()

    async def _connection(self) -> _DoqClientProtocol:
        async with self._connecting:
            if self._protocol is not None and self._protocol._quic._close_event is None:
                return self._protocol
            await self.close()
            stack = contextlib.AsyncExitStack()
            try:
                protocol = await stack.enter_async_context(
                    connect(
                        self.host,
                        self.port,
                        configuration=self._configuration,
                        create_protocol=_DoqClientProtocol,
                    )
                )
                peer: x509.Certificate | None = protocol._quic.tls._peer_certificate
                _check_pin(self.tls, peer.public_bytes(serialization.Encoding.DER) if peer else None)
            except BaseException:
                await stack.aclose()
                raise
            assert isinstance(protocol, _DoqClientProtocol)
            self._protocol, self._exit = protocol, stack
            return protocol

    async def query(self, wire: bytes, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                protocol = await self._connection()
                response = await protocol.ask(_with_id(wire, 0))  # RFC 9250 section 4.2.1: ID 0
        except TimeoutError:
            raise
        except OSError as exc:  # ConnectionError included: aioquic's failed handshake
            raise UpstreamError(describe(exc)) from exc
        if len(response) < 14 or int.from_bytes(response[:2], "big") != len(response) - 2:
            raise UpstreamError("malformed answer stream")
        return wire[:2] + response[4:]

    async def close(self) -> None:
        stack, self._exit, self._protocol = self._exit, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()
