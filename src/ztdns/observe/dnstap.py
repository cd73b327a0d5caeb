"""The dnstap sink: protobuf messages (the dnstap.proto schema, encoded by hand: a few fields of two messages)
over Frame Streams (bidirectional: READY/ACCEPT/START handshake, data frames, STOP/FINISH), to a unix socket or
TCP, reconnecting when the collector goes away (at most once a second; events meanwhile are dropped and counted).

Each query makes a CLIENT_QUERY and a CLIENT_RESPONSE message carrying the bytes received and sent, the client's
address and port, the transport, and the times; ``identity`` is the instance name, ``version`` ztdns's version.
With privacy ``pseudonymised`` the address is ipcrypt-deterministic and the port keyed-hashed. Each exchange with
an upstream (the forwarder's, or recursion's with authoritative servers) makes a RESOLVER_QUERY and a
RESOLVER_RESPONSE with the upstream's address and port and both messages' bytes. ``messages`` (the sink's
``messages`` key) says which of the two kinds the sink carries.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from ztdns.client import ClientInfo
from ztdns.observe.events import Item, RawQuery, UpstreamEvent
from ztdns.observe.formats import MAX_SIZE, ChunkParts, made_into, native_extension, only_queries
from ztdns.observe.privacy import Pseudonyms
from ztdns.observe.ring import Batch, Chunk, items
from ztdns.observe.sinks import RECORDS_PER_WRITE, QueueSink

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"

# Frame Streams control frame types and the content-type field.
CONTROL_ACCEPT = 0x01
CONTROL_START = 0x02
CONTROL_STOP = 0x03
CONTROL_READY = 0x04
CONTROL_FINISH = 0x05
FIELD_CONTENT_TYPE = 0x01

# dnstap.proto enums.
DNSTAP_MESSAGE = 1
AUTH_QUERY, AUTH_RESPONSE, RESOLVER_QUERY, RESOLVER_RESPONSE, CLIENT_QUERY, CLIENT_RESPONSE = 1, 2, 3, 4, 5, 6
INET, INET6 = 1, 2
PROTOCOLS = {"udp": 1, "tcp": 2, "dot": 3, "doh": 4, "doq": 7}

# Field tags of the Message fields the raw path writes itself (field number << 3 | wire type).
_TIME_SECONDS = bytes((8 << 3,))  # query_time_sec, varint
_QUERY_MESSAGE = bytes((10 << 3 | 2,))
_RESPONSE_SECONDS = bytes((12 << 3,))
_RESPONSE_MESSAGE = bytes((14 << 3 | 2,))
_QUERY_NANOS_TAG = 9 << 3 | 5  # query_time_nsec, fixed32
_RESPONSE_NANOS_TAG = 13 << 3 | 5  # response_time_nsec, fixed32
_NANOS = struct.Struct("<BI")  # a fixed32 field: its tag and value
_U32_BE = struct.Struct("!I")
_CLIENT_MEMO = 65_536

RECONNECT_INTERVAL = 1.0
SEND_TIMEOUT = 2.0  # a collector that stops reading stalls only this thread, for at most this long per batch


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<I", value)


# Varints of small lengths (messages, DNS messages), and the message fields' tags with them, made once.
_SMALL = 1 << 14
_VARINTS = tuple(varint(number) for number in range(_SMALL))
_QUERY_HEADS = tuple(_QUERY_MESSAGE + encoded for encoded in _VARINTS)
_RESPONSE_HEADS = tuple(_RESPONSE_MESSAGE + encoded for encoded in _VARINTS)


def message(
    kind: int,
    family: int,
    protocol: int,
    address: bytes,
    port: int,
    when: float,
    wire: bytes,
    query_time: float | None = None,
    upstream: tuple[bytes, int] | None = None,
) -> bytes:
    """A dnstap ``Message``: a query (``wire`` is query_message, at ``when``) or a response (response_message at
    ``when``, with the query's time)."""
    response = kind in (AUTH_RESPONSE, RESOLVER_RESPONSE, CLIENT_RESPONSE)
    out = [
        field_varint(1, kind),
        field_varint(2, family),
        field_varint(3, protocol),
    ]
    if address:
        out += [field_bytes(4, address), field_varint(6, port)]
    if upstream is not None:
        out += [field_bytes(5, upstream[0]), field_varint(7, upstream[1])]
    started = when if query_time is None else query_time
    out += [field_varint(8, int(started)), field_fixed32(9, int(started % 1 * 1e9))]
    if response:
        out += [field_varint(12, int(when)), field_fixed32(13, int(when % 1 * 1e9)), field_bytes(14, wire)]
    else:
        out.append(field_bytes(10, wire))
    return b"".join(out)


def dnstap(identity: bytes, version: bytes, payload: bytes) -> bytes:
    """A ``Dnstap`` envelope of one message."""
    return (
        field_bytes(1, identity) + field_bytes(2, version) + field_varint(15, DNSTAP_MESSAGE) + field_bytes(14, payload)
    )


def data_frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def control_frame(kind: int, content_type: bytes | None = CONTENT_TYPE) -> bytes:
    body = struct.pack("!I", kind)
    if content_type is not None:
        body += struct.pack("!II", FIELD_CONTENT_TYPE, len(content_type)) + content_type
    return struct.pack("!II", 0, len(body)) + body


def read_control(sock: socket.socket) -> int:
    """Read one control frame; its type."""
    head = _read(sock, 8)
    escape, length = struct.unpack("!II", head)
    if escape != 0 or not 4 <= length <= 512:
        raise OSError("not a Frame Streams control frame")
    body = _read(sock, length)
    return int(struct.unpack("!I", body[:4])[0])


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the collector closed the connection")
        data += chunk
    return data


def _address(text: str) -> tuple[int, bytes]:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return INET, bytes(4)
    return (INET if address.version == 4 else INET6), address.packed


class DnstapSink(QueueSink):
    kind = "dnstap"
    raw = True

    def __init__(
        self,
        name: str,
        limit: int,
        identity: str,
        version: str,
        unix: str | None = None,
        tcp: tuple[str, int] | None = None,
        pseudonyms: Pseudonyms | None = None,
        messages: frozenset[str] = frozenset({"client", "resolver"}),
    ) -> None:
        super().__init__(name, limit)
        self.unix = unix
        self.tcp = tcp
        self.client_messages = "client" in messages  # CLIENT_QUERY/CLIENT_RESPONSE
        self.resolver_messages = "resolver" in messages  # RESOLVER_QUERY/RESOLVER_RESPONSE
        self.identity = identity.encode()
        self.version = version.encode()
        self.pseudonyms = pseudonyms
        # A Dnstap envelope up to its message's length: identity, version, type MESSAGE, the message's tag.
        self._envelope = dnstap(self.identity, self.version, b"")[:-1]
        # [client, CLIENT_QUERY's fields, CLIENT_RESPONSE's] by id(client) (the entry keeps its client: the id is
        # not reused while it lives), read by the _lines extension too.
        self._clients: dict[int, list[object]] = {}
        self._out = bytearray()  # the extension's output, kept from batch to batch
        self._chunk_parts = ChunkParts()  # the parts of the chunk being sent
        self.connected = False
        self.connects = 0
        self._sock: socket.socket | None = None
        self._last_attempt = float("-inf")
        self.start()

    def _connect(self, now: float) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        if now - self._last_attempt < RECONNECT_INTERVAL:
            return None
        self._last_attempt = now
        family = socket.AF_UNIX if self.unix is not None else socket.AF_INET6 if ":" in self.tcp[0] else socket.AF_INET  # type: ignore[index]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.unix if self.unix is not None else self.tcp)  # type: ignore[arg-type]
            sock.sendall(control_frame(CONTROL_READY))
            if read_control(sock) != CONTROL_ACCEPT:
                raise OSError("the collector did not accept the content type")
            sock.sendall(control_frame(CONTROL_START))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.connected = True
        self.connects += 1
        return sock

    def _client_fields(self, client: ClientInfo) -> list[object]:
        """[client, the start of a CLIENT_QUERY message, of a CLIENT_RESPONSE message] (type, family, protocol,
        address, port): the same for all its queries, made once while the client is seen (with full privacy:
        pseudonyms change when their key rotates)."""
        memo = self._clients
        fields = memo.get(id(client))
        if fields is not None and fields[0] is client:
            return fields
        family, address = _address(client.address)
        port = client.port
        if self.pseudonyms is not None:
            family, address = INET6, self.pseudonyms.address_bytes(client.address)
            port = self.pseudonyms.port(port)
        common = field_varint(2, family) + field_varint(3, PROTOCOLS.get(str(client.transport), 1))
        common += field_bytes(4, address) + field_varint(6, port)
        fields = [client, field_varint(1, CLIENT_QUERY) + common, field_varint(1, CLIENT_RESPONSE) + common]
        if self.pseudonyms is None:
            if len(memo) >= _CLIENT_MEMO:
                memo.clear()
            memo[id(client)] = fields
        return fields

    def _frame(self, out: list[bytes], start: bytes, heads: tuple[bytes, ...], tag: bytes, wire: bytes) -> None:
        """Add to ``out`` the pieces of one data frame: the message's fields ``start``, then ``wire`` as field
        ``tag`` (``heads``: that tag with small lengths)."""
        size = len(wire)
        head = heads[size] if size < _SMALL else tag + varint(size)
        length = len(start) + len(head) + size
        length_field = _VARINTS[length] if length < _SMALL else varint(length)
        envelope = self._envelope
        out += (_U32_BE.pack(len(envelope) + len(length_field) + length), envelope, length_field, start, head, wire)

    def raw_frames(self, batch: list[RawQuery]) -> bytes:
        """The frames of queries straight from the serving thread's tuples: per query only the times and the
        lengths are encoded (the seconds once per second, small lengths from a table) and the bytes received and
        sent are placed; the rest is made once (the envelope) or per client. No message is built and then copied
        into its envelope: lengths are added up, and the pieces joined once for the whole batch."""
        client_fields = self._client_fields
        frame = self._frame
        out: list[bytes] = []
        started_second = answered_second = -1
        started_field = answered_field = b""
        for when, client, _, latency, query, response in batch:
            fields = client_fields(client)
            query_start: bytes = fields[1]  # type: ignore[assignment]
            response_start: bytes = fields[2]  # type: ignore[assignment]
            started = when - latency
            if int(started) != started_second:
                started_second = int(started)
                started_field = _TIME_SECONDS + varint(started_second)
            times = started_field + _NANOS.pack(_QUERY_NANOS_TAG, int(started % 1 * 1e9))
            frame(out, query_start + times, _QUERY_HEADS, _QUERY_MESSAGE, query)
            if response is not None:
                if int(when) != answered_second:
                    answered_second = int(when)
                    answered_field = _RESPONSE_SECONDS + varint(answered_second)
                answered = answered_field + _NANOS.pack(_RESPONSE_NANOS_TAG, int(when % 1 * 1e9))
                frame(out, response_start + times + answered, _RESPONSE_HEADS, _RESPONSE_MESSAGE, response)
        return b"".join(out)

    def frames(self, batch: Batch, start: int = 0, stop: int = MAX_SIZE) -> memoryview | None:
        """:meth:`raw_frames` of records ``start`` to ``stop`` of a batch (a list of items, or a chunk of the C
        ring), made by the ``_lines`` extension when it is built (the same bytes) in a buffer reused by the next
        call (release the view before it); None when that part holds other events."""
        extension = native_extension()
        if extension is not None:
            clients, fields, envelope = self._clients, self._client_fields, self._envelope
            source = self._chunk_parts.source(batch) if isinstance(batch, Chunk) else batch

            def make(out: bytearray) -> int | None:
                size: int | None = extension.dnstap(source, start, stop, clients, fields, envelope, out)
                return size

            made, self._out = made_into(make, self._out)
            if made is not None:
                return made
        part = items(batch, start, stop)
        if not only_queries(part):
            return None
        return memoryview(self.raw_frames(part))

    def upstream_frames(self, event: UpstreamEvent) -> bytes:
        """RESOLVER_QUERY and RESOLVER_RESPONSE: the upstream is the response address."""
        family, address = _address(event.host)
        protocol = PROTOCOLS.get(event.transport, 1)
        upstream = (address, event.port)
        query = message(RESOLVER_QUERY, family, protocol, b"", 0, event.sent, event.query, upstream=upstream)
        reply = event.reply if isinstance(event.reply, bytes) else event.reply.to_wire()
        response = message(RESOLVER_RESPONSE, family, protocol, b"", 0, event.time, reply, event.sent, upstream)
        envelope = self.identity, self.version
        return data_frame(dnstap(*envelope, query)) + data_frame(dnstap(*envelope, response))

    def emit_raw(self, batch: Batch, now: float) -> None:
        for start in range(0, len(batch), RECORDS_PER_WRITE):
            stop = min(start + RECORDS_PER_WRITE, len(batch))
            made = self.frames(batch, start, stop) if self.client_messages else None
            if made is not None:
                self._send(made, stop - start, now)
            else:
                self._send_mixed(items(batch, start, stop), now)

    def _send_mixed(self, batch: list[Item], now: float) -> None:
        """Upstream traffic among the queries (security events are not DNS messages): kept in order; ``messages``
        chooses which are sent."""
        clients, resolvers = self.client_messages, self.resolver_messages
        chunks = []
        for item in batch:
            if type(item) is tuple:
                if clients:
                    chunks.append(self.raw_frames([item]))
            elif resolvers and isinstance(item, UpstreamEvent):
                chunks.append(self.upstream_frames(item))
        if chunks:
            self._send(b"".join(chunks), len(chunks), now)

    def _send(self, data: bytes | memoryview, count: int, now: float) -> None:
        try:
            sock = self._connect(now)
        except OSError:
            sock = None
        if sock is None:
            self.dropped += count
            return
        try:
            sock.sendall(data)
        except OSError:
            self._disconnect()
            raise
        self.written += count

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self.connected = False

    def shutdown(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendall(control_frame(CONTROL_STOP, None))
            read_control(sock)  # FINISH
        except OSError:
            pass
        self._disconnect()
