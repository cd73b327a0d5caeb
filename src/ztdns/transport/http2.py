"""A sans-IO HTTP/2 server connection (RFC 9113) with an HPACK decoder (RFC 7541), made for DoH.

Why not the ``h2`` library: it costs 250-350 µs of CPU per request (event objects, header validation passes,
a bit-by-bit Huffman decoder), which capped DoH at a tenth of Unbound's rate. DoH needs a small part of HTTP/2:
requests are one HEADERS block and at most one small body, responses are one HEADERS and one DATA frame, and
there is no push, no priority, no upgrade. This module does exactly that, in bytes in / bytes out form, and
is tested with ``h2`` as the client and with nghttp2-based clients (curl, kdig, dnsperf).

Limits a client cannot push past: ``max_streams`` concurrent streams (more are refused with REFUSED_STREAM),
a header block of at most ``max_header_bytes`` compressed and decoded (the CONTINUATION flood and HPACK
"bomb" close the connection), bodies of at most ``max_body`` bytes (the stream window is that size; a larger
declared or sent body gets a :class:`BodyTooLarge` so the caller can answer 413), and a budget of stream
resets (``reset_allowance`` plus one per answered request) beyond which the connection is closed with
ENHANCE_YOUR_CALM: the "rapid reset" attack. Our responses are never indexed into the client's HPACK table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
# Our connection receive window: raised at once so a client sending POST bodies on many streams never waits
# for a WINDOW_UPDATE; given back whenever half of it has been received.
CONNECTION_WINDOW = 1 << 20
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME = 16384  # what we accept (the RFC default; we never advertise more)
HEADER_TABLE_SIZE = 4096  # our HPACK decoder's dynamic table (the RFC default; we never advertise more)

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    range(10)
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_HEADER_TABLE_SIZE, _SETTINGS_ENABLE_PUSH, _SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE, _SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6
_FRAME_HEADER = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    ENHANCE_YOUR_CALM = 11


# Events: what a batch of received bytes meant for the caller.


@dataclass(frozen=True, slots=True)
class Request:
    """A complete request: headers and the whole body."""

    stream_id: int
    method: str
    path: str
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class BodyTooLarge:
    """The request body is (or is declared) larger than ``max_body``: answer 413; the rest is not read."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client cancelled a stream we had not answered yet."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The connection is over (the client sent GOAWAY, or broke the protocol and we sent one): send what
    ``data_to_send`` holds, then close."""

    error_code: int


Event = Request | BodyTooLarge | StreamReset | ConnectionEnded


class ProtocolError(Exception):
    """A connection error: the whole connection ends with GOAWAY(code)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _StreamError(Exception):
    """A stream error: that stream is reset, the connection goes on."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


# HPACK (RFC 7541)


def _huffman_tree() -> tuple[list[tuple[int, int]], list[bool]]:
    """Internal nodes of the Huffman code as [child for bit 0, child for bit 1]; a child >= 0 is a node, a child
    < 0 is the leaf of symbol ``-child - 1``. Also, per node, whether stopping there is valid padding (a prefix
    of the EOS code, i.e. all one bits, shorter than 8 bits)."""
    children: list[list[int]] = [[0, 0]]
    depth_ones: list[int] = [0]  # depth of the node when every bit on its path is 1, else -1
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for position in range(length - 1, -1, -1):
            bit = (code >> position) & 1
            if position == 0:
                children[node][bit] = -symbol - 1
                break
            if children[node][bit] == 0:
                children.append([0, 0])
                ones = depth_ones[node] + 1 if bit and depth_ones[node] >= 0 else -1
                depth_ones.append(ones)
                children[node][bit] = len(children) - 1
            node = children[node][bit]
    return [(zero, one) for zero, one in children], [0 <= d < 8 for d in depth_ones]


_TREE, _PADDING_OK = _huffman_tree()
# Byte-at-a-time decoding: for tree node N and input byte B, index N << 8 | B of _NEXT holds the next node
# (shifted by 8) and of _OUT the decoded bytes. A byte that decodes EOS (an error) leads to _EOS, an index past
# the tables. About 7 µs for a GET path in a running server; hpack's bit-by-bit decoder takes 25. Two flat lists
# of shared objects rather than one list of tuples: a third faster, the tuples fell out of cache. Built on
# first use (60 ms), not at import.
_EOS = len(_TREE) << 8
_NEXT: list[int] = []
_OUT: list[bytes] = []


def _build_tables() -> None:
    shifted = [node << 8 for node in range(len(_TREE))]
    outputs: dict[bytes, bytes] = {}
    next_nodes, decoded = [], []
    for node in range(len(_TREE)):
        for byte in range(256):
            current, out, eos = node, bytearray(), False
            for position in range(7, -1, -1):
                child = _TREE[current][(byte >> position) & 1]
                if child >= 0:
                    current = child
                elif child == -257:
                    eos = True
                    break
                else:
                    out.append(-child - 1)
                    current = 0
            next_nodes.append(_EOS if eos else shifted[current])
            decoded.append(outputs.setdefault(bytes(out), bytes(out)))
    _NEXT[:], _OUT[:] = next_nodes, decoded


def huffman_decode(data: bytes) -> bytes:
    if not _NEXT:
        _build_tables()
    next_nodes, decoded = _NEXT, _OUT
    state = 0
    parts = []
    try:
        for byte in data:
            index = state | byte
            parts.append(decoded[index])
            state = next_nodes[index]
        padding_ok = _PADDING_OK[state >> 8]
    except IndexError:  # went through _EOS
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "EOS in a Huffman string") from None
    if not padding_ok:
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "bad Huffman padding")
    return b"".join(parts)


_STATIC: list[tuple[bytes, bytes]] = list(HeaderTable.STATIC_TABLE)
_STATIC_COUNT = len(_STATIC)


class HpackDecoder:
    """Header block decoding with the dynamic table; any error is a COMPRESSION_ERROR connection error."""

    def __init__(self, max_table_size: int = HEADER_TABLE_SIZE) -> None:
        self.max_allowed = max_table_size  # what we advertised
        self.max_size = max_table_size  # what the encoder chose (size updates)
        self.size = 0
        self.dynamic: list[tuple[bytes, bytes]] = []  # newest first

    def decode(self, block: bytes, max_list_size: int) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        list_size = 0
        offset, end = 0, len(block)
        at_start = True
        while offset < end:
            first = block[offset]
            if 0x80 < first <= 0x80 + _STATIC_COUNT:  # indexed, from the static table: most fields of a request
                headers.append(_STATIC[first - 0x81])
                offset += 1
            elif 0x80 + _STATIC_COUNT < first < 0xFF:  # indexed, from the dynamic table with a one-byte index
                position = first - 0x81 - _STATIC_COUNT
                if position >= len(self.dynamic):
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"no header table entry {first & 0x7F}")
                headers.append(self.dynamic[position])
                offset += 1
            elif first & 0x80:  # indexed header field
                index, offset = self._integer(block, offset, 7)
                headers.append(self._entry(index))
            elif first & 0x40:  # literal with incremental indexing
                header, offset = self._literal(block, offset, 6)
                self._add(header)
                headers.append(header)
            elif first & 0x20:  # dynamic table size update: only before the first field
                if not at_start:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "table size update after a field")
                size, offset = self._integer(block, offset, 5)
                if size > self.max_allowed:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "table size above our setting")
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                header, offset = self._literal(block, offset, 4)
                headers.append(header)
            at_start = False
            list_size += len(headers[-1][0]) + len(headers[-1][1]) + 32
            if list_size > max_list_size:
                # Indexed fields can repeat a large table entry cheaply: stop before the list grows further.
                raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header list larger than advertised")
        return headers

    @staticmethod
    def _integer(block: bytes, offset: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        try:
            value = block[offset] & mask
            offset += 1
            if value < mask:
                return value, offset
            shift = 0
            while True:
                byte = block[offset]
                offset += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return value, offset
                if shift > 28:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "integer too large")
        except IndexError:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "truncated integer") from None

    def _string(self, block: bytes, offset: int) -> tuple[bytes, int]:
        if offset >= len(block):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "truncated string")
        huffman = block[offset] & 0x80
        length, offset = self._integer(block, offset, 7)
        if offset + length > len(block):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "string runs past the block")
        raw = block[offset : offset + length]
        return (huffman_decode(raw) if huffman else raw), offset + length

    def _literal(self, block: bytes, offset: int, prefix: int) -> tuple[tuple[bytes, bytes], int]:
        index, offset = self._integer(block, offset, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, offset = self._string(block, offset)
        value, offset = self._string(block, offset)
        return (name, value), offset

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        position = index - _STATIC_COUNT - 1
        if index == 0 or position >= len(self.dynamic):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"no header table entry {index}")
        return self.dynamic[position]

    def _add(self, header: tuple[bytes, bytes]) -> None:
        size = len(header[0]) + len(header[1]) + 32
        if size > self.max_size:  # RFC 7541 section 4.4: an entry larger than the table empties it
            self.dynamic.clear()
            self.size = 0
            return
        self.dynamic.insert(0, header)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32


def _hpack_integer(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_STATUS_INDEX = {int(value): index + 1 for index, (name, value) in enumerate(_STATIC) if name == b":status"}
_NAME_INDEX: dict[str, int] = {}
for _index, (_name, _value) in enumerate(_STATIC):
    _NAME_INDEX.setdefault(_name.decode(), _index + 1)


_BLOCKS: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}  # DoH answers repeat a few header sets


def encode_headers(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A response header block: static-table references and literals never added to the client's table, so
    we keep no encoder state (the block is a few bytes longer; DoH responses carry four headers)."""
    key = (status, tuple(headers))
    block = _BLOCKS.get(key)
    if block is None:
        if len(_BLOCKS) >= 4096:
            _BLOCKS.clear()
        block = _BLOCKS[key] = _encode_headers(status, headers)
    return block


def _encode_headers(status: int, headers: list[tuple[str, str]]) -> bytes:
    parts = []
    index = _STATUS_INDEX.get(status)
    if index is not None:
        parts.append(bytes((0x80 | index,)))
    else:
        parts.append(b"\x08" + _hpack_integer(3, 7, 0) + str(status).encode())
    for name, value in headers:
        name_index = _NAME_INDEX.get(name)
        if name_index is not None:
            parts.append(_hpack_integer(name_index, 4, 0))
        else:
            raw_name = name.encode("latin-1")
            parts.append(b"\x00" + _hpack_integer(len(raw_name), 7, 0) + raw_name)
        raw_value = value.encode("latin-1")
        parts.append(_hpack_integer(len(raw_value), 7, 0) + raw_value)
    return b"".join(parts)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


# The connection


_FORBIDDEN = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))


class _Stream:
    __slots__ = (
        "body",
        "declared_length",
        "headers",
        "outbound",
        "receive_window",
        "remote_closed",
        "send_window",
        "too_large",
    )

    def __init__(self, send_window: int, receive_window: int, headers: dict[bytes, bytes]) -> None:
        self.send_window = send_window
        self.receive_window = receive_window
        self.headers = headers
        self.body: bytes | bytearray = b""  # a bytearray once a second DATA frame comes
        self.declared_length: int | None = None
        self.remote_closed = False  # the client sent END_STREAM
        self.too_large = False  # we answer 413 and ignore the rest of the body
        self.outbound: bytes | None = None  # response body waiting for flow-control window


class H2ServerConnection:
    """Feed received bytes to :meth:`receive`, act on the events, answer with :meth:`respond`, and write
    :meth:`data_to_send` after each batch."""

    def __init__(self, *, max_streams: int, max_header_bytes: int, max_body: int, reset_allowance: int = 100) -> None:
        self.max_streams = max_streams
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.reset_allowance = reset_allowance
        self.streams: dict[int, _Stream] = {}
        self.decoder = HpackDecoder()
        self.highest_stream = 0
        self.resets = 0
        self.answered = 0
        self.going_away = False
        self.ended = False
        self._buffer = b""
        self._preface = False
        self._settings_seen = False
        self._continuing: tuple[int, int, bytearray] | None = None  # (stream, flags, header block so far)
        self._peer_window = DEFAULT_WINDOW  # peer's SETTINGS_INITIAL_WINDOW_SIZE for our sending
        self._peer_max_frame = MAX_FRAME
        self._send_window = DEFAULT_WINDOW  # connection window for what we send
        self._receive_window = CONNECTION_WINDOW
        self._received_unacknowledged = 0
        self._out: list[bytes] = []
        settings = struct.pack(
            ">HIHIHIHIHI",
            _SETTINGS_HEADER_TABLE_SIZE,
            HEADER_TABLE_SIZE,
            _SETTINGS_ENABLE_PUSH,
            0,
            _SETTINGS_MAX_CONCURRENT_STREAMS,
            max_streams,
            _SETTINGS_INITIAL_WINDOW_SIZE,
            max_body,
            _SETTINGS_MAX_HEADER_LIST_SIZE,
            max_header_bytes,
        )
        self._out.append(frame(_SETTINGS, 0, 0, settings))
        self._out.append(frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def busy(self) -> bool:
        """True while a complete request waits for its answer or an answer waits for window. A request the
        client never finishes does not count, so the idle timeout still closes such a connection."""
        return any(stream.remote_closed or stream.outbound for stream in self.streams.values())

    # Receiving

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.ended:
            return events
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        try:
            if not self._preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 preface")
                    self._buffer = buffer
                    return events
                if not buffer.startswith(PREFACE):
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 preface")
                self._preface = True
                offset = len(PREFACE)
            end = len(buffer)
            while end - offset >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, offset)
                length = high << 8 | low
                if length > MAX_FRAME:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "frame larger than our maximum")
                if end - offset - 9 < length:
                    break
                payload = buffer[offset + 9 : offset + 9 + length]
                offset += 9 + length
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events)
                if self.ended:
                    return events
        except ProtocolError as exc:
            self._end(exc.code, str(exc))
            events.append(ConnectionEnded(exc.code))
            return events
        self._buffer = buffer[offset:]
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is not None and kind != _CONTINUATION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and kind != _SETTINGS:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == _HEADERS:
            self._headers_frame(flags, stream_id, payload, events)
        elif kind == _DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == _CONTINUATION:
            self._continuation(flags, stream_id, payload, events)
        elif kind == _SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == _WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == _RST_STREAM:
            self._rst_stream(stream_id, payload, events)
        elif kind == _PING:
            if stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING is 8 bytes")
            if not flags & _ACK:
                self._out.append(frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY:
            if stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.ended = True
            events.append(ConnectionEnded(ErrorCode.NO_ERROR))
        elif kind == _PRIORITY:
            if not stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset(stream_id, ErrorCode.FRAME_SIZE_ERROR)
        elif kind == _PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "clients cannot push")
        # Unknown frame types are ignored (RFC 9113 section 4.1).

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & _PADDED:
            if not payload or payload[0] >= len(payload):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
            start, end = 1, len(payload) - payload[0]
        if flags & _PRIORITY_FLAG:
            start += 5
            if start > end:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        block = payload[start:end]
        if flags & _END_HEADERS:
            self._header_block(stream_id, flags, block, events)
        else:
            self._continuing = (stream_id, flags, bytearray(block))
            self._check_block_size(len(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self._continuing[2]
        block += payload
        self._check_block_size(len(block))
        if flags & _END_HEADERS:
            first_flags = self._continuing[1]
            self._continuing = None
            self._header_block(stream_id, first_flags, bytes(block), events)

    def _check_block_size(self, size: int) -> None:
        if size > self.max_header_bytes:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block larger than advertised")

    def _header_block(self, stream_id: int, flags: int, block: bytes, events: list[Event]) -> None:
        # Decode first, whatever becomes of the stream: the HPACK table must stay in step with the client's.
        headers = self.decoder.decode(block, self.max_header_bytes)
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers: allowed at the end of a body, and ignored.
            if stream.remote_closed or not flags & _END_STREAM:
                self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
                return
            self._remote_end(stream_id, stream, events)
            return
        if stream_id <= self.highest_stream:
            return  # a stream we already closed or reset: what was in flight when we did
        if not stream_id & 1:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "client streams have odd numbers")
        self.highest_stream = stream_id
        if self.going_away or len(self.streams) >= self.max_streams:
            self._out.append(frame(_RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCode.REFUSED_STREAM)))
            return
        fields = _request_fields(headers)
        if fields is None:
            self._out.append(frame(_RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCode.PROTOCOL_ERROR)))
            return
        stream = _Stream(self._peer_window, self.max_body, fields)
        self.streams[stream_id] = stream
        length = fields.get(b"content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 10:  # int() of thousands of digits raises
                self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
                return
            stream.declared_length = int(length)
            if stream.declared_length > self.max_body:
                stream.too_large = True
                events.append(BodyTooLarge(stream_id))
        if flags & _END_STREAM:
            self._remote_end(stream_id, stream, events)

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.highest_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
        size = len(payload)
        self._receive_window -= size
        if self._receive_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._received_unacknowledged += size
        if self._received_unacknowledged >= CONNECTION_WINDOW // 2:
            self._out.append(frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received_unacknowledged)))
            self._receive_window += self._received_unacknowledged
            self._received_unacknowledged = 0
        start, end = 0, size
        if flags & _PADDED:
            if not payload or payload[0] >= size:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
            start, end = 1, size - payload[0]
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # closed or reset by us: frames in flight are ignored (section 5.1)
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return
        if start or end != size:
            # Give padding back at once: the stream window is sized for the largest body, not for padding.
            stream.receive_window += size - (end - start)
            self._out.append(frame(_WINDOW_UPDATE, 0, stream_id, struct.pack(">I", size - (end - start))))
        if not stream.too_large:
            chunk = payload[start:end]
            if not stream.body:
                stream.body = chunk
            else:
                if isinstance(stream.body, bytes):
                    stream.body = bytearray(stream.body)
                stream.body += chunk
            if len(stream.body) > self.max_body:
                stream.too_large = True
                stream.body = b""
                events.append(BodyTooLarge(stream_id))
        if flags & _END_STREAM:
            self._remote_end(stream_id, stream, events)

    def _remote_end(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        if stream.too_large:
            return  # the 413 is the caller's to send (or still waiting for window); then the stream is done
        if stream.declared_length is not None and stream.declared_length != len(stream.body):
            self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        headers = stream.headers
        content_type = headers.get(b"content-type")
        events.append(
            Request(
                stream_id,
                headers[b":method"].decode("latin-1"),
                headers[b":path"].decode("latin-1"),
                None if content_type is None else content_type.decode("latin-1"),
                bytes(stream.body),
            )
        )
        stream.body = b""

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self._settings_seen = True
        for offset in range(0, len(payload), 6):
            code, value = struct.unpack_from(">HI", payload, offset)
            if code == _SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif code == _SETTINGS_MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= 16777215:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad maximum frame size")
                self._peer_max_frame = value
            elif code == _SETTINGS_ENABLE_PUSH and value > 1:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad ENABLE_PUSH")
            # Header table size: we never index our responses, so any size suits us. Others: nothing to do.
        self._out.append(frame(_SETTINGS, _ACK, 0))
        self._flush_all()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "zero window increment")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_all()
            return
        if stream_id > self.highest_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return
        self._flush(stream_id, stream)

    def _rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is 4 bytes")
        if not stream_id or stream_id > self.highest_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if self.streams.pop(stream_id, None) is None:
            return
        events.append(StreamReset(stream_id))
        self.resets += 1
        if self.resets > self.reset_allowance + self.answered:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "too many stream resets")

    # Sending

    def respond(self, stream_id: int, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Answer a stream (a no-op when the client reset it meanwhile)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.outbound is not None or self.ended:
            return
        self.answered += 1
        block = encode_headers(status, headers)
        if not body:
            self._out.append(frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block))
            self._sent_all(stream_id)
            return
        self._out.append(frame(_HEADERS, _END_HEADERS, stream_id, block))
        stream.outbound = body
        self._flush(stream_id, stream)

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Give up on a stream (the handler dropped the query)."""
        if stream_id in self.streams and not self.ended:
            self._reset(stream_id, code)

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """GOAWAY: with NO_ERROR, streams already open are still answered and new ones refused."""
        if self.ended or (self.going_away and code == ErrorCode.NO_ERROR):
            return
        if code == ErrorCode.NO_ERROR:
            self.going_away = True
            self._out.append(frame(_GOAWAY, 0, 0, struct.pack(">II", self.highest_stream, code)))
        else:
            self._end(code, "closed")

    def _end(self, code: ErrorCode, reason: str) -> None:
        self.ended = True
        self.streams.clear()
        self._out.append(frame(_GOAWAY, 0, 0, struct.pack(">II", self.highest_stream, code) + reason.encode()))

    def _reset(self, stream_id: int, code: ErrorCode) -> None:
        self.streams.pop(stream_id, None)
        self._out.append(frame(_RST_STREAM, 0, stream_id, struct.pack(">I", code)))

    def _flush_all(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.outbound is not None:
                self._flush(stream_id, stream)

    def _flush(self, stream_id: int, stream: _Stream) -> None:
        data = stream.outbound
        if not data:
            return
        while data:
            size = min(len(data), self._send_window, stream.send_window, self._peer_max_frame)
            if size <= 0:
                stream.outbound = data
                return
            last = size == len(data)
            self._out.append(frame(_DATA, _END_STREAM if last else 0, stream_id, data[:size]))
            self._send_window -= size
            stream.send_window -= size
            data = data[size:]
        self._sent_all(stream_id)

    def _sent_all(self, stream_id: int) -> None:
        # Done with the stream, even when we answered before the client finished sending (413): what it still
        # sends is ignored. No RST_STREAM(NO_ERROR) then, though section 8.1 allows one: curl reports the
        # response as failed when it gets one.
        del self.streams[stream_id]


def _request_fields(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The request's fields by name, or None when the request is malformed (RFC 9113 section 8.1.1)."""
    fields: dict[bytes, bytes] = {}
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in fields:
                return None
        else:
            regular = True
            if name != name.lower() or name in _FORBIDDEN or (name == b"te" and value != b"trailers"):
                return None
        fields[name] = value
    if b":method" not in fields or b":path" not in fields or b":scheme" not in fields:
        return None
    return fields
