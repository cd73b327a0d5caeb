"""DNS over HTTPS (RFC 8484) on HTTP/2 (our sans-IO :mod:`ztdns.transport.http2`) and HTTP/1.1, chosen by ALPN.

The request rules are a pure function (:func:`decode_request`) tested with strings and bytes: every malformed
request gets its HTTP error here, before the DNS handler ever sees it. The two HTTP engines below only move
bytes and streams. Answers from the handler's fast path are sent inline, like DoT; the rest run as one task per
request. HTTP/2 abuse limits (enforced in :mod:`ztdns.transport.http2`): at most ``max_pipelined`` concurrent
streams (more are refused with REFUSED_STREAM), 16 KiB of headers, 64 KiB stream windows (a body cannot be
larger than 65535 bytes anyway), and a budget of stream resets per connection (100 plus one per answered
request) beyond which the connection is closed with ENHANCE_YOUR_CALM: the "rapid reset" attack.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from ztdns.client import Transport
from ztdns.config.model import ListenConfig
from ztdns.transport import Handler
from ztdns.transport.dnswire import is_query, min_ttl
from ztdns.transport.dot import finish_response
from ztdns.transport.http2 import BodyTooLarge, H2ServerConnection, Request, StreamReset
from ztdns.transport.stream import TlsConnection, TlsStreamListener
from ztdns.transport.tls import TlsMaterial

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/dns-message"
MAX_MESSAGE = 65535
MAX_HEADER_BYTES = 16384
RESET_ALLOWANCE = 100
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


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
        # parse_qs costs more than the rest of the request; percent-decoding is needed only when there is a "%".
        values = [field[4:] for field in query_string.split("&") if field.startswith("dns=")]
        if len(values) != 1:
            return http_error(400, "missing dns parameter")
        value = unquote_plus(values[0]) if "%" in values[0] or "+" in values[0] else values[0]
        encoded = value.encode("ascii", "replace")
        # base64url without padding (RFC 8484 section 6); be strict so odd encodings never reach the resolver.
        if not encoded or encoded.translate(None, _B64URL) or len(encoded) % 4 == 1:  # deletes the alphabet
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


# Headers of recent answers by their bytes after the ID: a cache hit is the same bytes again (until its TTLs
# count down), so the TTL walk is done once per answer rather than once per request. Small answers only.
_ANSWER_HEADERS: dict[bytes, list[tuple[str, str]]] = {}
_CACHED_ANSWER_SIZE = 512


def dns_response(query: bytes, response: bytes) -> HttpResponse:
    response = finish_response(query, response)
    key = response[2:]
    headers = _ANSWER_HEADERS.get(key)
    if headers is None:
        ttl = min_ttl(response)
        headers = [
            ("content-type", CONTENT_TYPE),
            ("content-length", str(len(response))),
            ("cache-control", f"max-age={ttl}" if ttl is not None else "no-cache"),
        ]
        if len(response) <= _CACHED_ANSWER_SIZE:
            if len(_ANSWER_HEADERS) >= 4096:
                _ANSWER_HEADERS.clear()
            _ANSWER_HEADERS[key] = headers
    return HttpResponse(200, headers, response)


# Other GET paths a DoH listener answers (the attestation report): path → coroutine of the query string and the
# listener's current certificate (PEM). Answered as a DNS query is, in a task.
Route = Callable[[str, bytes], Awaitable[HttpResponse]]


class RouteRequest(bytes):
    """A request for a route. It is bytes so that the engines carry it to :meth:`DohConnection.answer_later`
    exactly as they carry a DNS query."""

    route: Route


class DohListener(TlsStreamListener):
    routes: Mapping[str, Route] = {}


class DohConnection(TlsConnection):
    """One DoH connection; the engine (HTTP/2 or HTTP/1.1) is chosen by ALPN after the handshake."""

    kind = Transport.DOH

    def __init__(self, listener: TlsStreamListener) -> None:
        super().__init__(listener)
        self.engine: H2Engine | Http1Engine | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.routes = listener.routes if isinstance(listener, DohListener) else {}

    def received(self, data: bytes) -> None:
        self.touch()
        if self.engine is None:
            self.engine = H2Engine(self) if self.alpn == "h2" else Http1Engine(self)
        self.engine.received(data)

    def answer_now(self, method: str, target: str, content_type: str | None, body: bytes) -> HttpResponse | bytes:
        """The answer we can give at once (an HTTP error, or the handler's fast path), else the DNS query that
        must go to :meth:`answer_later`. Cache hits are answered inline, without a task per request."""
        decoded = decode_request(method, target, content_type, body, self.config.path)
        if isinstance(decoded, HttpResponse):
            path, _, query_string = target.partition("?")
            route = self.routes.get(path) if decoded.status == 404 and method == "GET" else None
            if route is None:
                return decoded
            request = RouteRequest(query_string.encode("latin-1"))
            request.route = route
            return request
        try:
            response = self.handler.fast(decoded, self.client)
        except Exception:
            log.exception("handler fast path failed")
            response = None
        return decoded if response is None else dns_response(decoded, response)

    async def answer_later(self, query: bytes) -> HttpResponse | None:
        """The handler's full answer; None when it dropped the query (the engine then cancels the request)."""
        if isinstance(query, RouteRequest):
            return await query.route(query.decode("latin-1"), self.listener.material.current.cert_pem)
        response = await self.handler.handle(query, self.client)
        return None if response is None else dns_response(query, response)

    def spawn(self, coroutine: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
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
            self.touch()

    def write_records(self, chunks: list[bytes]) -> None:
        """Each chunk in a TLS record of its own, all in one send."""
        if chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)
            self.touch()

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
    """HTTP/2 on :class:`H2ServerConnection`. Each answer is a chunk of its own (so a TLS record of its own);
    the answers made while handling one read go out in one send, with the control frames (SETTINGS and PING
    acknowledgements, window updates) that read produced. Answers from tasks are written when they are ready."""

    def __init__(self, connection: DohConnection) -> None:
        self.connection = connection
        self.h2 = H2ServerConnection(
            max_streams=connection.config.max_pipelined,
            max_header_bytes=MAX_HEADER_BYTES,
            max_body=MAX_MESSAGE,
            reset_allowance=RESET_ALLOWANCE,
        )
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.batch: list[bytes] | None = None  # answers of the read being handled
        connection.write(self.h2.data_to_send())

    def busy(self) -> bool:
        return self.h2.busy()

    def received(self, data: bytes) -> None:
        # Answers made while handling this read are collected and sent together at the end: one TLS record per
        # answer, one send for all of them.
        self.batch = []
        for event in self.h2.receive(data):
            if isinstance(event, Request):
                self._request(event)
            elif isinstance(event, BodyTooLarge):
                self._respond(event.stream_id, http_error(413, "DNS message larger than 65535 bytes"))
            elif isinstance(event, StreamReset):
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            else:
                log.debug("HTTP/2 connection ended: error code %d", event.error_code)
                break
        batch, self.batch = self.batch, None
        tail = self.h2.data_to_send()
        if tail:
            batch.append(tail)
        self.connection.write_records(batch)
        if self.h2.ended:
            self.connection.close()
        else:
            self.connection.maybe_finish_drain()

    def _request(self, request: Request) -> None:
        answer = self.connection.answer_now(request.method, request.path, request.content_type, request.body)
        if isinstance(answer, HttpResponse):
            self._respond(request.stream_id, answer)
        else:
            self.tasks[request.stream_id] = self.connection.spawn(self._later(request.stream_id, answer))

    async def _later(self, stream_id: int, query: bytes) -> None:
        try:
            response = await self.connection.answer_later(query)
        finally:
            self.tasks.pop(stream_id, None)
        if response is None:
            self.h2.reset(stream_id)
            self.connection.write(self.h2.data_to_send())
        else:
            self._respond(stream_id, response)

    def _respond(self, stream_id: int, response: HttpResponse) -> None:
        self.h2.respond(stream_id, response.status, response.headers, response.body)
        # One TLS record per response: dnsperf's DoH client (2.10) takes one response per SSL_read and loses
        # the rest of a record that holds several, then waits for the socket forever.
        data = self.h2.data_to_send()
        if self.batch is None:
            self.connection.write(data)
        elif data:
            self.batch.append(data)

    def drain(self) -> None:
        self.h2.close()
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
        self._next()
        if len(self.buffer) > MAX_HEADER_BYTES + MAX_MESSAGE + 1024 and self.connection.transport is not None:
            self.connection.transport.pause_reading()  # the client pipelines faster than we answer

    def _next(self) -> None:
        while self._one():
            pass

    def _one(self) -> bool:
        """Take one request from the buffer; True when it was answered at once and the next may follow."""
        if self.active or self.closing:
            return False
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._finish(http_error(431, "request header too large"), close=True)
            return False
        if head_end > MAX_HEADER_BYTES:
            self._finish(http_error(431, "request header too large"), close=True)
            return False
        lines = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._finish(http_error(400, "malformed header"), close=True)
                return False
            headers[name.lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._finish(http_error(400, "malformed request line"), close=True)
            return False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._finish(http_error(501, "chunked request bodies are not supported"), close=True)
            return False
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._finish(http_error(400, "bad content-length"), close=True)
            return False
        length = int(length_text)
        if length > MAX_MESSAGE:
            self._finish(http_error(413, "DNS message larger than 65535 bytes"), close=True)
            return False
        if len(self.buffer) < head_end + 4 + length:
            return False
        body = bytes(self.buffer[head_end + 4 : head_end + 4 + length])
        del self.buffer[: head_end + 4 + length]
        close = headers.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
        answer = self.connection.answer_now(parts[0], parts[1], headers.get("content-type"), body)
        if isinstance(answer, bytes):
            self.active = True
            self.connection.spawn(self._later(answer, close))
            return False
        self._finish(answer, close=close or self.connection.draining)
        return not self.closing

    async def _later(self, query: bytes, close: bool) -> None:
        try:
            response = await self.connection.answer_later(query)
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
    503: "Service Unavailable",
}


async def start_doh_listener(
    config: ListenConfig, handler: Handler, tls: TlsMaterial, *, reuse_port: bool = False
) -> DohListener:
    """Listen for DoH on ``config.address`` at ``config.path``. Close with ``await listener.close(drain)``."""
    listener = DohListener(config, handler, tls, DohConnection)
    await listener.start(reuse_port=reuse_port)
    return listener
