"""DNS over HTTPS (RFC 8484) on HTTP/2 (``h2``, sans-IO) and HTTP/1.1, chosen by ALPN.

The request rules are a pure function (:func:`decode_request`) tested with strings and bytes: every malformed
request gets its HTTP error here, before the DNS handler ever sees it. The two HTTP engines below only move
bytes and streams. HTTP/2 abuse limits: at most ``max_pipelined`` concurrent streams (more are refused with
REFUSED_STREAM), 16 KiB of headers, 64 KiB flow-control windows (a body cannot be larger than 65535 bytes
anyway), and a budget of stream resets per connection (100 plus one per answered request) beyond which the
connection is closed with ENHANCE_YOUR_CALM: the "rapid reset" attack.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ztdns.client import Transport
from ztdns.config.model import ListenConfig
from ztdns.transport import Handler
from ztdns.transport.dnswire import is_query, min_ttl
from ztdns.transport.dot import finish_response
from ztdns.transport.stream import TlsConnection, TlsStreamListener
from ztdns.transport.tls import TlsMaterial

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/dns-message"
MAX_MESSAGE = 65535
MAX_HEADER_BYTES = 16384
RESET_ALLOWANCE = 100
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def http_error(status: int, reason: str, *extra: tuple[str, str]) -> HttpResponse:
    body = f"{reason}\n".encode()
    headers = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
    return HttpResponse(status, headers, body)


def decode_request(method: str, target: str, content_type: str | None, body: bytes, path: str) -> bytes | HttpResponse:
    """The DNS query an HTTP request carries, or the HTTP error to answer instead (RFC 8484 section 4.1)."""
    request_path, _, query_string = target.partition("?")
    if request_path != path:
        return http_error(404, "not found")
    if method == "GET":
        values = parse_qs(query_string, keep_blank_values=True).get("dns")
        if not values or len(values) != 1:
            return http_error(400, "missing dns parameter")
        encoded = values[0].encode("ascii", "replace")
        # base64url without padding (RFC 8484 section 6); be strict so odd encodings never reach the resolver.
        if not encoded or not _B64URL.issuperset(encoded) or len(encoded) % 4 == 1:
            return http_error(400, "dns parameter is not base64url without padding")
        try:
            wire = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return http_error(400, "dns parameter is not base64url")
    elif method == "POST":
        if (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
            return http_error(415, f"content-type must be {CONTENT_TYPE}")
        if len(body) > MAX_MESSAGE:
            return http_error(413, "DNS message larger than 65535 bytes")
        wire = body
    else:
        return http_error(405, "only GET and POST", ("allow", "GET, POST"))
    if len(wire) > MAX_MESSAGE:
        return http_error(413, "DNS message larger than 65535 bytes")
    if not is_query(wire):
        return http_error(400, "not a DNS query")
    return wire


def dns_response(query: bytes, response: bytes) -> HttpResponse:
    response = finish_response(query, response)
    ttl = min_ttl(response)
    return HttpResponse(
        200,
        [
            ("content-type", CONTENT_TYPE),
            ("content-length", str(len(response))),
            ("cache-control", f"max-age={ttl}" if ttl is not None else "no-cache"),
        ],
        response,
    )


class DohConnection(TlsConnection):
    """One DoH connection; the engine (HTTP/2 or HTTP/1.1) is chosen by ALPN after the handshake."""

    kind = Transport.DOH

    def __init__(self, listener: TlsStreamListener) -> None:
        super().__init__(listener)
        self.engine: H2Engine | Http1Engine | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def received(self, data: bytes) -> None:
        self.touch()
        if self.engine is None:
            self.engine = H2Engine(self) if self.alpn == "h2" else Http1Engine(self)
        self.engine.received(data)

    async def answer(self, method: str, target: str, content_type: str | None, body: bytes) -> HttpResponse | None:
        """Run one request; None when the handler dropped the query (the engine then cancels the request)."""
        decoded = decode_request(method, target, content_type, body, self.config.path)
        if isinstance(decoded, HttpResponse):
            return decoded
        response = self.handler.fast(decoded, self.client)
        if response is None:
            response = await self.handler.handle(decoded, self.client)
        return None if response is None else dns_response(decoded, response)

    def spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("DoH request failed", exc_info=task.exception())
        self.maybe_finish_drain()

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def busy(self) -> bool:
        return bool(self.tasks) or (self.engine is not None and self.engine.busy())

    def drain(self) -> None:
        self.draining = True
        if self.engine is not None:
            self.engine.drain()
        self.maybe_finish_drain()

    def maybe_finish_drain(self) -> None:
        if self.draining and not self.busy():
            self.close()

    def stopped(self) -> None:
        for task in self.tasks:
            task.cancel()


class H2Engine:
    def __init__(self, connection: DohConnection) -> None:
        self.connection = connection
        self.max_streams = connection.config.max_pipelined
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BYTES,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_MESSAGE,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        connection.write(self.h2.data_to_send())
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.streams: dict[int, asyncio.Task[None]] = {}
        self.pending: dict[int, bytes] = {}  # response bytes waiting for flow-control window
        self.resets = 0
        self.answered = 0
        self.going_away = False

    def busy(self) -> bool:
        return bool(self.streams or self.pending)

    def received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error: %s", exc)
            self._close(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        for event in events:
            self._event(event)
            if self.connection.transport is None or self.connection.transport.is_closing():
                return
        self.connection.write(self.h2.data_to_send())

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._reset(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in list(self.pending):
                self._flush(stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.connection.close()

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.going_away or len(self.requests) + len(self.streams) >= self.max_streams:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers = {str(name): str(value) for name, value in event.headers or ()}
        self.requests[stream_id] = (headers, bytearray())
        if event.stream_ended is not None:
            self._ended(stream_id)

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        # Give the window back at once: the 64 KiB stream window and body limit bound what a client can send.
        if event.flow_controlled_length:
            self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        request = self.requests.get(stream_id)
        if request is None:
            return
        request[1].extend(event.data or b"")
        if len(request[1]) > MAX_MESSAGE:
            del self.requests[stream_id]
            self._respond(stream_id, http_error(413, "DNS message larger than 65535 bytes"), end_early=True)

    def _ended(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id, None)
        if request is None:
            return
        headers, body = request
        self.streams[stream_id] = self.connection.spawn(self._run(stream_id, headers, bytes(body)))

    async def _run(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        try:
            response = await self.connection.answer(
                headers.get(":method", ""), headers.get(":path", ""), headers.get("content-type"), body
            )
        finally:
            self.streams.pop(stream_id, None)
        if response is None:
            self._cancel(stream_id)
        else:
            self.answered += 1
            self._respond(stream_id, response)
        self.connection.write(self.h2.data_to_send())

    def _respond(self, stream_id: int, response: HttpResponse, end_early: bool = False) -> None:
        try:
            self.h2.send_headers(stream_id, [(":status", str(response.status)), *response.headers])
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.pending[stream_id] = response.body
        self._flush(stream_id)
        if end_early and stream_id in self.pending:
            # We answered before the client finished sending: tell it to stop (RFC 9113 section 8.1).
            self.pending.pop(stream_id)
            self._cancel(stream_id)

    def _flush(self, stream_id: int) -> None:
        data = self.pending.get(stream_id)
        if data is None:
            return
        try:
            while data:
                size = min(len(data), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if size <= 0:
                    self.pending[stream_id] = data
                    return
                self.h2.send_data(stream_id, data[:size])
                data = data[size:]
            self.h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.pending.pop(stream_id, None)
        self.connection.maybe_finish_drain()

    def _cancel(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    def _reset(self, stream_id: int) -> None:
        self.requests.pop(stream_id, None)
        self.pending.pop(stream_id, None)
        task = self.streams.pop(stream_id, None)
        if task is not None:
            task.cancel()
        self.resets += 1
        if self.resets > RESET_ALLOWANCE + self.answered:
            log.warning("DoH client reset %d streams: closing the connection", self.resets)
            self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _close(self, code: h2.errors.ErrorCodes) -> None:
        try:
            self.h2.close_connection(error_code=code)
            self.connection.write(self.h2.data_to_send())
        except h2.exceptions.ProtocolError:
            pass
        self.connection.close()

    def drain(self) -> None:
        self.going_away = True
        self.h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
        self.connection.write(self.h2.data_to_send())


class Http1Engine:
    """HTTP/1.1, one request at a time (pipelined requests wait in the buffer), keep-alive, Content-Length
    bodies only (chunked request bodies get 501)."""

    def __init__(self, connection: DohConnection) -> None:
        self.connection = connection
        self.buffer = bytearray()
        self.active = False
        self.closing = False

    def busy(self) -> bool:
        return self.active

    def received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEADER_BYTES + MAX_MESSAGE + 1024 and self.connection.transport is not None:
            self.connection.transport.pause_reading()  # the client pipelines faster than we answer
        self._next()

    def _next(self) -> None:
        if self.active or self.closing:
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._finish(http_error(431, "request header too large"), close=True)
            return
        if head_end > MAX_HEADER_BYTES:
            self._finish(http_error(431, "request header too large"), close=True)
            return
        lines = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._finish(http_error(400, "malformed header"), close=True)
                return
            headers[name.lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._finish(http_error(400, "malformed request line"), close=True)
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._finish(http_error(501, "chunked request bodies are not supported"), close=True)
            return
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._finish(http_error(400, "bad content-length"), close=True)
            return
        length = int(length_text)
        if length > MAX_MESSAGE:
            self._finish(http_error(413, "DNS message larger than 65535 bytes"), close=True)
            return
        if len(self.buffer) < head_end + 4 + length:
            return
        body = bytes(self.buffer[head_end + 4 : head_end + 4 + length])
        del self.buffer[: head_end + 4 + length]
        close = headers.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
        self.active = True
        self.connection.spawn(self._run(parts[0], parts[1], headers.get("content-type"), body, close))

    async def _run(self, method: str, target: str, content_type: str | None, body: bytes, close: bool) -> None:
        try:
            response = await self.connection.answer(method, target, content_type, body)
        finally:
            self.active = False
        if response is None:
            self.connection.close()
            return
        self._finish(response, close=close or self.connection.draining)
        if self.connection.transport is not None and not self.closing:
            self.connection.transport.resume_reading()
            self._next()

    def _finish(self, response: HttpResponse, *, close: bool) -> None:
        reason = _REASONS.get(response.status, "")
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if close:
            lines.append("connection: close")
        self.connection.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        if close:
            self.closing = True
            self.connection.close()

    def drain(self) -> None:
        if not self.active:
            self.closing = True


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
}


async def start_doh_listener(
    config: ListenConfig, handler: Handler, tls: TlsMaterial, *, reuse_port: bool = False
) -> TlsStreamListener:
    """Listen for DoH on ``config.address`` at ``config.path``. Close with ``await listener.close(drain)``."""
    listener = TlsStreamListener(config, handler, tls, DohConnection)
    await listener.start(reuse_port=reuse_port)
    return listener
