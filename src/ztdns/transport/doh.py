"""DNS over HTTPS (RFC 8484) on HTTP/2 (our sans-IO :mod:`ztdns.transport.http2`) and HTTP/1.1 (h11), chosen
by ALPN.

The request rules are a pure function (:func:`decode_request`) tested with strings and bytes: every malformed
request gets its HTTP error here, before the DNS handler ever sees it. The two HTTP engines below only move
bytes and streams. Answers from the handler's fast path are sent inline, like DoT; the rest run as one task per
request. HTTP/2 abuse limits (enforced in :mod:`ztdns.transport.http2`): at most ``max_pipelined`` concurrent
streams (more are refused with REFUSED_STREAM), 16 KiB of headers, 64 KiB stream windows (a body cannot be
larger than 65535 bytes anyway), and a budget of stream resets per connection (100 plus one per answered
request) beyond which the connection is closed with ENHANCE_YOUR_CALM: the "rapid reset" attack.

Hostile clients: a request must arrive whole within ``query_timeout`` and an answer held back by a client's
window be taken within it (:class:`RequestProgress`, swept by the listener); unfinished request bodies are
bounded per connection by the HTTP/2 connection window and over the listener by ``max_pending_body_bytes``
(:class:`BodyBudget`). Config: the ``[[listen]]`` keys of a ``doh`` listener. No metrics of its own. Client
data: requests are handed to the handler with the connection's :class:`ClientInfo`; none is logged here.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote_plus
from weakref import WeakKeyDictionary

import h11

from ztdns.client import ClientInfo, Transport
from ztdns.config.identity import CLIENT_ID
from ztdns.config.listen import ListenConfig
from ztdns.transport import Handler
from ztdns.transport.http2 import BodyTooLarge, H2ServerConnection, Request, StreamReset, huffman
from ztdns.transport.http2.hpack import encode_headers
from ztdns.transport.limits import Progress
from ztdns.transport.stream import TlsConnection, TlsStreamListener
from ztdns.transport.tls import TlsMaterial
from ztdns.wire.records import is_query, min_ttl, pad_response, wants_padding

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/dns-message"
MAX_MESSAGE = 65535
MAX_HEADER_BYTES = 16384
RESET_ALLOWANCE = 100


@dataclass(slots=True)  # not frozen: one per answer, and a frozen dataclass takes twice as long to make
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    block: bytes | None = None  # the status and headers as an HTTP/2 header block, when made already


def http_error(status: int, reason: str, *extra: tuple[str, str]) -> HttpResponse:
    body = f"{reason}\n".encode()
    headers = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
    return HttpResponse(status, headers, body)


def decode_request(method: str, target: str, content_type: str | None, body: bytes, path: str) -> bytes | HttpResponse:
    """The DNS query an HTTP request carries, or the HTTP error to answer instead (RFC 8484 section 4.1)."""
    decoded = _decode_request(method, target, content_type, body, path)
    return decoded if isinstance(decoded, HttpResponse) else decoded[0]


def _decode_request(
    method: str, target: str, content_type: str | None, body: bytes, path: str
) -> tuple[bytes, bool] | HttpResponse:
    """:func:`decode_request`, with whether the query wants a padded answer (:func:`_checked_query`)."""
    if method == "GET":
        # The common case, PATH?dns=VALUE and nothing to unquote, by hand: what dns_parameter finds then.
        plain = (
            target.startswith(path)
            and target.startswith("?dns=", len(path))
            and "&" not in target
            and "%" not in target
            and "+" not in target
        )
        value = target[len(path) + 5 :] if plain else dns_parameter(target, path)
        if isinstance(value, HttpResponse):
            return value
        decoded = base64url(value)
        if decoded is None:
            return http_error(400, "dns parameter is not base64url without padding")
        wire = decoded
    elif target != path and target.partition("?")[0] != path:
        return http_error(404, "not found")
    elif method == "POST":
        if content_type != CONTENT_TYPE and (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
            return http_error(415, f"content-type must be {CONTENT_TYPE}")
        if len(body) > MAX_MESSAGE:
            return http_error(413, "DNS message larger than 65535 bytes")
        wire = body
    else:
        return http_error(405, "only GET and POST", ("allow", "GET, POST"))
    if len(wire) > MAX_MESSAGE:
        return http_error(413, "DNS message larger than 65535 bytes")
    padded = _checked_query(wire)
    if padded is None:
        return http_error(400, "not a DNS query")
    return wire, padded


# base64url (RFC 4648 section 5) to the standard alphabet, and the padding that a length modulo 4 lacks.
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")


def base64url(value: str) -> bytes | None:
    """What VALUE encodes in base64url without padding (RFC 8484 section 6), or None when it is anything else:
    strict, so that odd encodings never reach the resolver. The alphabet is checked by binascii's strict mode once
    the URL-safe characters are mapped to the standard ones, so the standard ones (and padding) are refused
    first; about half the cost of deleting the alphabet to see what is left (bench/encrypted_path.py)."""
    if not value or (len(value) & 3) == 1 or "=" in value or "+" in value or "/" in value:
        return None
    try:
        encoded = value.encode("ascii")
        return binascii.a2b_base64(
            encoded.translate(_URLSAFE_TO_STANDARD) + _PADDING[len(encoded) & 3], strict_mode=True
        )
    except (binascii.Error, ValueError):  # a character outside the alphabet (UnicodeEncodeError is a ValueError)
        return None


# Queries seen, by their bytes after the ID (which neither check reads): whether each wants a padded answer. A
# client repeats the same questions; both checks walk every record.
_QUERIES: dict[bytes, bool] = {}
_CHECKED_QUERY_SIZE = 512


def _checked_query(wire: bytes) -> bool | None:
    """None when WIRE is not a well-formed DNS query (:func:`is_query`), else whether its answer must be padded
    (:func:`wants_padding`)."""
    key = wire[2:]
    padded = _QUERIES.get(key)
    if padded is None:
        if not is_query(wire):
            return None
        padded = wants_padding(wire)
        if len(wire) <= _CHECKED_QUERY_SIZE:
            if len(_QUERIES) >= 4096:
                _QUERIES.clear()
            _QUERIES[key] = padded
    return padded


def dns_parameter(target: str, path: str) -> str | HttpResponse:
    """The ``dns`` parameter of a GET request's target, unquoted, or the HTTP error to answer."""
    request_path, _, query_string = target.partition("?")
    if request_path != path:
        return http_error(404, "not found")
    # parse_qs costs more than the rest of the request; percent-decoding is needed only with "%" or "+".
    values = [field[4:] for field in query_string.split("&") if field.startswith("dns=")]
    if len(values) != 1:
        return http_error(400, "missing dns parameter")
    return unquote_plus(values[0]) if "%" in values[0] or "+" in values[0] else values[0]


# Headers of recent answers (and their HTTP/2 header block) by their bytes after the ID: a cache hit is the same
# bytes again (until its TTLs count down), so the TTL walk is done once per answer rather than once per request.
# Small answers only.
_ANSWER_HEADERS: dict[bytes, tuple[list[tuple[str, str]], bytes]] = {}
_CACHED_ANSWER_SIZE = 512


def dns_response(query: bytes, response: bytes, padded: bool | None = None) -> HttpResponse:
    """The HTTP answer carrying RESPONSE to QUERY; PADDED: whether QUERY wants a padded answer, when known."""
    if padded is None:
        padded = bool(_checked_query(query))  # a query of ours: decode_request checked it
    if padded:
        response = pad_response(response)
    key = response[2:]
    cached = _ANSWER_HEADERS.get(key)
    if cached is None:
        ttl = min_ttl(response)
        headers = [
            ("content-type", CONTENT_TYPE),
            ("content-length", str(len(response))),
            ("cache-control", f"max-age={ttl}" if ttl is not None else "no-cache"),
        ]
        cached = headers, encode_headers(200, headers)
        if len(response) <= _CACHED_ANSWER_SIZE:
            if len(_ANSWER_HEADERS) >= 4096:
                _ANSWER_HEADERS.clear()
            _ANSWER_HEADERS[key] = cached
    return HttpResponse(200, cached[0], response, cached[1])


class BodyBudget:
    """Bytes of unfinished request bodies that a listener's DoH connections hold, and the bound on their sum
    (``max_pending_body_bytes``): above it, the connections holding the most are cut first."""

    __slots__ = ("cut", "held", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[DohConnection, int] = {}
        self.total = 0
        self.cut = 0

    def update(self, connection: DohConnection, size: int) -> None:
        old = self.held.get(connection, 0)
        if size == old:
            return
        if size:
            self.held[connection] = size
        else:
            del self.held[connection]
        self.total += size - old
        if self.total <= self.limit:
            return
        for worst in sorted(self.held, key=self.held.__getitem__, reverse=True):
            self.total -= self.held.pop(worst)
            self.cut += 1
            worst.abort()
            if self.total <= self.limit:
                break


_BODY_BUDGETS: WeakKeyDictionary[TlsStreamListener, BodyBudget] = WeakKeyDictionary()


def body_budget(listener: TlsStreamListener) -> BodyBudget:
    """The body budget the DoH connections of LISTENER share."""
    budget = _BODY_BUDGETS.get(listener)
    if budget is None:
        budget = _BODY_BUDGETS[listener] = BodyBudget(listener.config.max_pending_body_bytes)
    return budget


class RequestProgress(Progress):
    """The request timeout of a DoH connection: what the client has owed the longest (the rest of a request,
    or window for an answer) comes from its HTTP engine, so a trickle of bytes or a zero window is no
    progress."""

    def __init__(self, connection: DohConnection) -> None:
        super().__init__()
        self.connection = connection

    def overdue(self, now: float, timeout: float) -> bool:
        engine = self.connection.engine
        since = None if engine is None else engine.oldest_unfinished()
        return since is not None and now - since > timeout


# Other GET paths a DoH listener answers (the attestation report): path → coroutine of the query string and the
# listener's current certificate (PEM). Answered as a DNS query is, in a task.
Route = Callable[[str, bytes], Awaitable[HttpResponse]]


class RouteRequest(bytes):
    """A request for a route. It is bytes so that the engines carry it to :meth:`DohConnection.answer_later`
    exactly as they carry a DNS query."""

    route: Route


class ClaimedQuery(bytes):
    """A DNS query whose URL carried a client id (``/dns-query/ID``), with the client that claims it; bytes so
    that the engines carry it like any query. A claim, not authentication (docs/policy.md, "Client ids")."""

    client: ClientInfo


class DohListener(TlsStreamListener):
    routes: Mapping[str, Route] = {}


class DohConnection(TlsConnection):
    """One DoH connection; the engine (HTTP/2 or HTTP/1.1) is chosen by ALPN after the handshake. Its idle
    time is reset by whole requests and by answers, not by other bytes (slowloris, PING floods)."""

    kind = Transport.DOH

    def __init__(self, listener: TlsStreamListener) -> None:
        super().__init__(listener)
        self.engine: H2Engine | Http1Engine | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.progress = RequestProgress(self)
        self.bodies = body_budget(listener)
        self.routes = listener.routes if isinstance(listener, DohListener) else {}
        self.clock: Callable[[], float] = self.loop.time  # the loop's own method: no Python frame per read

    def received(self, data: bytes) -> None:
        if self.engine is None:
            self.engine = H2Engine(self) if self.alpn == "h2" else Http1Engine(self)
        self.engine.received(data)
        self.bodies.update(self, self.engine.body_bytes())

    data_received = received  # called by the TLS layer directly, not through TlsConnection.data_received

    def answer_now(self, method: str, target: str, content_type: str | None, body: bytes) -> HttpResponse | bytes:
        """The answer we can give at once (an HTTP error, or the handler's fast path), else the DNS query that
        must go to :meth:`answer_later`. Cache hits are answered inline, without a task per request."""
        client = self.client
        path = self.config.path
        if target.startswith("/", len(path)) and target.startswith(path):  # /dns-query/CLIENT-ID: a claimed id
            request_path = target.partition("?")[0]
            if CLIENT_ID.fullmatch(request_path[len(path) + 1 :]) is not None:
                client = replace(client, client_id=request_path[len(path) + 1 :])
                path = request_path
        decoded = _decode_request(method, target, content_type, body, path)
        if isinstance(decoded, HttpResponse):
            path, _, query_string = target.partition("?")
            route = self.routes.get(path) if decoded.status == 404 and method == "GET" else None
            if route is None:
                return decoded
            request = RouteRequest(query_string.encode("latin-1"))
            request.route = route
            return request
        wire, padded = decoded
        try:
            response = self.handler.fast(wire, client)
        except Exception:
            log.exception("handler fast path failed")
            response = None
        if response is not None:
            return dns_response(wire, response, padded)
        if client is self.client:
            return wire
        claimed = ClaimedQuery(wire)
        claimed.client = client
        return claimed

    async def answer_later(self, query: bytes) -> HttpResponse | None:
        """The handler's full answer; None when it dropped the query (the engine then cancels the request)."""
        if isinstance(query, RouteRequest):
            return await query.route(query.decode("latin-1"), self.listener.material.current.cert_pem)
        client = query.client if isinstance(query, ClaimedQuery) else self.client
        response = await self.handler.handle(query, client)
        return None if response is None else dns_response(query, response)

    def spawn(self, coroutine: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coroutine)
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

    def write_records(self, chunks: list[bytes]) -> None:
        """Each chunk in a TLS record of its own, all in one send."""
        if chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

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
        self.bodies.update(self, 0)
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
            clock=connection.clock,
        )
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.batch: list[bytes] | None = None  # answers of the read being handled
        # What _inline made of a GET it could not answer at once (a query for a task), for its Request event.
        self.decided: dict[int, HttpResponse | bytes] = {}
        self.h2.inline = self._inline
        connection.write(self.h2.data_to_send())

    def busy(self) -> bool:
        return self.h2.busy()

    def body_bytes(self) -> int:
        return self.h2.body_bytes

    def oldest_unfinished(self) -> float | None:
        return self.h2.oldest_unfinished()

    def received(self, data: bytes) -> None:
        # Answers made while handling this read are collected and sent together at the end: one TLS record per
        # answer, one send for all of them.
        events = self.h2.receive(data)
        batch = self.h2.chunks_to_send()  # the GETs answered inline, at the end of the read
        self.batch = batch
        requests = False
        for event in events:
            if isinstance(event, Request):
                requests = True
                self._request(event, batch)
            elif isinstance(event, BodyTooLarge):
                self._respond(event.stream_id, http_error(413, "DNS message larger than 65535 bytes"))
            elif isinstance(event, StreamReset):
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            else:
                log.debug("HTTP/2 connection ended: error code %d", event.error_code)
                break
        self.batch = None
        if self.decided:
            self.decided.clear()
        if requests or batch:  # once per read, not per request or answer
            self.connection.touch()
        tail = self.h2.data_to_send()
        if tail:
            batch.append(tail)
        self.connection.write_records(batch)
        if self.h2.ended:
            self.connection.close()
        else:
            self.connection.maybe_finish_drain()

    def _inline(self, stream_id: int, method: bytes, path: bytes) -> tuple[bytes, bytes] | None:
        """The answer to a GET of the read just handled, as :attr:`H2ServerConnection.inline` takes it: the header
        block and body; None for a query that goes to a task (kept for its Request event) or another method."""
        if method != b"GET":
            return None
        answer = self.connection.answer_now("GET", path.decode("latin-1"), None, b"")
        if isinstance(answer, HttpResponse):
            return (answer.block or encode_headers(answer.status, answer.headers)), answer.body
        self.decided[stream_id] = answer
        return None

    def _request(self, request: Request, batch: list[bytes]) -> None:
        answer = self.decided.pop(request.stream_id, None) if self.decided else None
        if answer is None:
            answer = self.connection.answer_now(request.method, request.path, request.content_type, request.body)
        if isinstance(answer, HttpResponse):
            if request.method == "HEAD":  # headers only (RFC 9110 section 9.3.2): a DATA frame is an error
                answer = HttpResponse(answer.status, answer.headers)
            # What _respond does for an answer made while handling a read, without the call.
            h2 = self.h2
            h2.respond(request.stream_id, answer.status, answer.headers, answer.body, answer.block)
            data = h2.data_to_send()
            if data:
                batch.append(data)
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
        self.h2.respond(stream_id, response.status, response.headers, response.body, response.block)
        # One TLS record per response: dnsperf's DoH client (2.10) takes one response per SSL_read and loses
        # the rest of a record that holds several, then waits for the socket forever.
        data = self.h2.data_to_send()
        if self.batch is None:  # from a task
            self.connection.touch()
            self.connection.write(data)
        elif data:
            self.batch.append(data)

    def drain(self) -> None:
        self.h2.close()
        self.connection.write(self.h2.data_to_send())


class Http1Engine:
    """HTTP/1.1 on h11: one request at a time (pipelined requests wait in h11's buffer), keep-alive, bodies
    with Content-Length or chunked, up to 65535 bytes. Whatever h11 rejects (a malformed request line or
    header, a bad Content-Length) gets its 4xx and the connection closes; HEAD gets headers only;
    ``Expect: 100-continue`` gets its interim 100 before the body is read."""

    def __init__(self, connection: DohConnection) -> None:
        self.connection = connection
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.active = False  # a query is with the handler
        self.closing = False
        self.request_started: float | None = None  # when the first bytes of the request being received came
        self.buffered = 0  # bytes in h11's buffer (pipelined requests, the head being received)

    def busy(self) -> bool:
        return self.active

    def body_bytes(self) -> int:
        return len(self.body) + self.buffered

    def oldest_unfinished(self) -> float | None:
        return self.request_started

    def _note_progress(self) -> None:
        """Count what h11 holds; start the request clock when bytes of a request we are reading wait for the
        rest."""
        self.buffered = len(self.h11.trailing_data[0])
        if self.active or self.closing:
            self.request_started = None
        elif self.request_started is None and (
            self.h11.their_state is h11.SEND_BODY or (self.h11.their_state is h11.IDLE and self.buffered)
        ):
            self.request_started = self.connection.clock()

    def received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._next()
        self._note_progress()
        if self.buffered > MAX_HEADER_BYTES + MAX_MESSAGE + 1024:
            self.connection.pause_reading_for_writes()  # the client pipelines faster than we answer

    def _next(self) -> None:
        while not self.active and not self.closing:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = "request header too large" if status == 431 else f"malformed request: {exc}"
                self._send(http_error(status, reason), close=True)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
            elif isinstance(event, h11.Request):
                self._start(event)
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_MESSAGE:
                    self._send(http_error(413, "DNS message larger than 65535 bytes"), close=True)
            elif isinstance(event, h11.EndOfMessage):
                self._complete()
            else:  # ConnectionClosed
                self.closing = True
                self.connection.close()

    def _start(self, request: h11.Request) -> None:
        self.request = request
        self.body.clear()
        length = _header(request, b"content-length")
        # h11 bounds a head that is still incomplete; one that arrived whole in a single read is bounded here.
        if len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers) > MAX_HEADER_BYTES:
            self._send(http_error(431, "request header too large"), close=True)
        elif length is not None and int(length) > MAX_MESSAGE:  # h11 checked that it is digits
            self._send(http_error(413, "DNS message larger than 65535 bytes"), close=True)
        elif self.h11.they_are_waiting_for_100_continue:
            self.connection.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")

    def _complete(self) -> None:
        request = self.request
        assert request is not None
        self.request_started = None
        self.connection.touch()
        answer = self.connection.answer_now(
            request.method.decode("ascii", "replace"),
            request.target.decode("latin-1"),
            None if (content_type := _header(request, b"content-type")) is None else content_type.decode("latin-1"),
            bytes(self.body),
        )
        self.body.clear()
        if isinstance(answer, bytes):
            self.active = True
            self.connection.spawn(self._later(answer))
        else:
            self._send(answer, close=self.connection.draining)

    async def _later(self, query: bytes) -> None:
        try:
            response = await self.connection.answer_later(query)
        finally:
            self.active = False
        if response is None:
            self.closing = True
            self.connection.close()
            return
        self._send(response, close=self.connection.draining)
        if not self.closing:
            self.connection.resume_reading_if_possible()
            self._next()
            self._note_progress()
            self.connection.bodies.update(self.connection, self.body_bytes())

    def _send(self, response: HttpResponse, *, close: bool) -> None:
        self.connection.touch()
        headers = [*response.headers, ("connection", "close")] if close else response.headers
        head = h11.Response(
            status_code=response.status, headers=headers, reason=_REASONS.get(response.status, "").encode()
        )
        try:
            data = self.h11.send(head) or b""
            if response.body and not (self.request is not None and self.request.method == b"HEAD"):
                data += self.h11.send(h11.Data(data=response.body)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # nothing we may send in this state (the client broke the exchange)
            data = b""
            close = True
        self.request = None
        self.connection.write(data)
        if close or self.h11.our_state is h11.MUST_CLOSE:
            self.closing = True
            self.connection.close()

    def drain(self) -> None:
        if not self.active:
            self.closing = True


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for header, value in request.headers:
        if header == name:
            return value
    return None


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
    huffman.prepare()  # before the first request rather than during it
    return listener
