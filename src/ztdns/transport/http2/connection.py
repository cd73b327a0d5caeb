"""The server side of one HTTP/2 connection, in bytes in / events and bytes out form.

Each frame is checked against the frame rules (section 6), then against its stream's state through
:data:`~ztdns.transport.http2.stream.TRANSITIONS`; what the table calls a violation becomes RST_STREAM or GOAWAY
with the code RFC 9113 requires. Streams the client skipped count as idle, so HEADERS on them is a
PROTOCOL_ERROR (stream ids must increase); streams we reset are remembered (the last ``_RESET_MEMORY``) so that
frames the client sent before it saw our reset are ignored; every other stream below the highest is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ztdns.transport.http2.events import BodyTooLarge, ConnectionEnded, Event, Request, StreamReset
from ztdns.transport.http2.frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_FRAME_LIMIT,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    WINDOW_UPDATE,
    ErrorCode,
    ProtocolError,
    frame,
    goaway,
    read_settings,
    read_u31,
    rst_stream,
    settings,
    unpadded,
    window_update,
)
from ztdns.transport.http2.hpack import HEADER_TABLE_SIZE, HpackDecoder, encode_headers
from ztdns.transport.http2.stream import TABLE, ConnectionViolation, Stream, StreamInput, StreamState

# Enum members as module constants: looking them up on the class costs more than the rest of a transition.
_IDLE, _HALF_CLOSED_REMOTE, _CLOSED = StreamState.IDLE, StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED
_OPEN = StreamState.OPEN
_RESET_LOCALLY = StreamState.RESET_LOCALLY
_RECV_HEADERS, _RECV_DATA, _RECV_END_STREAM = (
    StreamInput.RECV_HEADERS,
    StreamInput.RECV_DATA,
    StreamInput.RECV_END_STREAM,
)
_RECV_RST_STREAM, _RECV_WINDOW_UPDATE = StreamInput.RECV_RST_STREAM, StreamInput.RECV_WINDOW_UPDATE
_RECV_PRIORITY, _SEND_END_STREAM = StreamInput.RECV_PRIORITY, StreamInput.SEND_END_STREAM

# Our connection receive window: raised at once so a client sending POST bodies on many streams never waits
# for a WINDOW_UPDATE; given back whenever half of it has been received.
CONNECTION_WINDOW = 1 << 20
_RESET_MEMORY = 256  # streams we reset, remembered to ignore what the client sent before it saw the reset
_SKIPPED_MEMORY = 16  # ranges of stream ids the client skipped
_CHECKED_MEMO = 16  # header lists whose fields are remembered: a client sends a few kinds of request

_FORBIDDEN = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))


class H2ServerConnection:
    """Feed received bytes to :meth:`receive`, act on the events, answer with :meth:`respond`, and write
    :meth:`data_to_send` after each batch."""

    # A request's whole header block (no padding, no priority) goes from the read loop to _header_block, past the
    # general frame dispatch; False: every frame takes the general way (the differential test's reference).
    header_lane = True

    def __init__(
        self,
        *,
        max_streams: int,
        max_header_bytes: int,
        max_body: int,
        reset_allowance: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_streams = max_streams
        self.clock = clock  # stamps when requests start and answers stall (see oldest_unfinished)
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.reset_allowance = reset_allowance
        self.streams: dict[int, Stream] = {}  # streams that are not closed
        self.decoder = HpackDecoder()
        # The fields of recent requests' header lists (shared and read-only, like the decoder's lists).
        self._checked: dict[int, tuple[list[tuple[bytes, bytes]], dict[bytes, bytes] | None]] = {}
        # The fields of the decoder's last shape of block (see HpackDecoder.varying), None if it is not checked
        # that way.
        self._shape: list[tuple[bytes, bytes]] | None = None
        self._shape_fields: dict[bytes, bytes] | None = None
        self.highest_stream = 0
        self.resets = 0
        self.answered = 0
        self.going_away = False
        # Requests without a body answered at the end of the read that brought them (see inline), no stream or event
        # made: each answer with the frames queued before it, a chunk of its own (chunks_to_send).
        self._chunks: list[bytes] = []
        self._inline_pending: list[tuple[int, dict[bytes, bytes]]] = []  # such requests of the read being handled
        # Set by the caller to answer such requests without their stream: (stream id, method, path) -> the answer's
        # header block and body, or None for the request to come as an event. Called at the end of the read.
        self.inline: Callable[[int, bytes, bytes], tuple[bytes, bytes] | None] | None = None
        self.ended = False
        # Bytes of unfinished request bodies we hold. The connection window is given back only as they are
        # released (request complete, stream gone), so they stay under CONNECTION_WINDOW.
        self.body_bytes = 0
        self._reset_locally: dict[int, None] = {}  # insertion-ordered set, oldest first
        self._skipped: list[tuple[int, int]] = []  # (first, last) ids the client jumped over
        self._buffer = b""
        self._buffer_since = 0.0  # when the partial frame in _buffer began
        self._now = 0.0  # when the read being handled came
        self._preface = False
        self._settings_seen = False
        self._continuing: tuple[int, int, bool, bytearray] | None = None  # stream, flags, self-dependent, block
        self._peer_window = DEFAULT_WINDOW  # peer's SETTINGS_INITIAL_WINDOW_SIZE for our sending
        self._peer_max_frame = MAX_FRAME
        self._send_window = DEFAULT_WINDOW  # connection window for what we send
        self._receive_window = CONNECTION_WINDOW
        self._received_unacknowledged = 0
        self._out: list[bytes] = [
            settings(
                {
                    SETTINGS_HEADER_TABLE_SIZE: HEADER_TABLE_SIZE,
                    SETTINGS_ENABLE_PUSH: 0,
                    SETTINGS_MAX_CONCURRENT_STREAMS: max_streams,
                    SETTINGS_INITIAL_WINDOW_SIZE: max_body,
                    SETTINGS_MAX_HEADER_LIST_SIZE: max_header_bytes,
                }
            ),
            window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW),
        ]

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def chunks_to_send(self) -> list[bytes]:
        """The answers made inline since the last call, each with the frames queued before it, in order; what
        :meth:`data_to_send` holds comes after them."""
        chunks = self._chunks
        self._chunks = []
        return chunks

    def busy(self) -> bool:
        """True while a complete request waits for its answer or an answer waits for window. A request the
        client never finishes does not count, so the idle timeout still closes such a connection."""
        return any(stream.state is _HALF_CLOSED_REMOTE or stream.outbound for stream in self.streams.values())

    def oldest_unfinished(self) -> float | None:
        """Since when (by ``clock``) the client has owed us something: the rest of a request or frame it began,
        or the window for an answer we have ready (a client advertising a zero window). None: nothing owed.
        The listener cuts the connection when that is older than its request timeout."""
        oldest = self._buffer_since if self._buffer else None
        for stream in self.streams.values():
            if stream.outbound:
                since = stream.stalled_since
            elif stream.state is _HALF_CLOSED_REMOTE:
                continue  # the request is complete: the answer is ours to give
            else:
                since = stream.started
            if oldest is None or since < oldest:
                oldest = since
        return oldest

    # Stream states

    def _state(self, stream_id: int) -> StreamState:
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.state
        if stream_id in self._reset_locally:
            return _RESET_LOCALLY
        if stream_id > self.highest_stream:
            return _IDLE
        for first, last in self._skipped:
            if first <= stream_id <= last:
                return _IDLE
        return _CLOSED

    def _transition(self, stream_id: int, state: StreamState, event: StreamInput) -> StreamState | None:
        """The stream's next state; None when the frame is to be dropped (ignored, or the stream reset here).
        A connection violation raises :class:`ProtocolError`."""
        outcome = TABLE[state][event]
        if outcome is None or isinstance(outcome, StreamState):
            return outcome
        if isinstance(outcome, ConnectionViolation):
            raise ProtocolError(outcome.code, f"{event.name} on a {state.name} stream")
        self._reset(stream_id, outcome.code)
        return None

    def _close_stream(self, stream_id: int) -> None:
        self._release(self.streams.pop(stream_id))

    def _release(self, stream: Stream) -> None:
        """Drop what we hold of a request body, and give its window back."""
        if stream.body:
            self.body_bytes -= len(stream.body)
            self._consumed(len(stream.body))
            stream.body = b""

    def _consumed(self, size: int) -> None:
        self._received_unacknowledged += size
        if self._received_unacknowledged >= CONNECTION_WINDOW // 2:
            self._out.append(window_update(0, self._received_unacknowledged))
            self._receive_window += self._received_unacknowledged
            self._received_unacknowledged = 0

    def _open(self, stream_id: int) -> None:
        if stream_id > self.highest_stream + 2 and self.highest_stream + 2 > 0:
            self._skipped.append((self.highest_stream + 2, stream_id - 2))
            if len(self._skipped) > _SKIPPED_MEMORY:
                del self._skipped[0]  # forgotten: those ids count as closed
        self.highest_stream = stream_id

    # Receiving

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.ended:
            return events
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        self._now = self.clock()  # when the frames of this read came
        try:
            if not self._preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 preface")
                    if not self._buffer:
                        self._buffer_since = self._now
                    self._buffer = buffer
                    return events
                if not buffer.startswith(PREFACE):
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 preface")
                self._preface = True
                offset = len(PREFACE)
            end = len(buffer)
            while end - offset >= 9:
                high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
                length = high << 8 | low
                if length > MAX_FRAME:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "frame larger than our maximum")
                if end - offset - 9 < length:
                    break
                payload = buffer[offset + 9 : offset + 9 + length]
                offset += 9 + length
                stream_id &= 0x7FFFFFFF
                if (
                    kind == HEADERS
                    and self.header_lane
                    and flags & (END_HEADERS | PADDED | PRIORITY_FLAG) == END_HEADERS
                    and stream_id
                    and self._continuing is None
                    and self._settings_seen
                ):
                    # A whole header block, unpadded, without priority: what _frame and _headers_frame come to.
                    self._header_block(stream_id, flags, False, payload, events)
                else:
                    if self._inline_pending and stream_id:  # a frame that may be for one of them: answer them first
                        self._answer_inline(events)
                    self._frame(kind, flags, stream_id, payload, events)
                if self.ended:
                    self._inline_pending.clear()
                    return events
            if self._inline_pending:
                self._answer_inline(events)
        except ProtocolError as exc:
            self._inline_pending.clear()
            self._end(exc.code, str(exc))
            events.append(ConnectionEnded(exc.code))
            return events
        if offset < len(buffer) and (offset or not self._buffer):  # a new partial frame
            self._buffer_since = self._now
        self._buffer = buffer[offset:]
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and kind != SETTINGS:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == HEADERS:
            self._headers_frame(flags, stream_id, payload, events)
        elif kind == DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload, events)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload, events)
        elif kind == PING:
            if stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING is 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            if stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.ended = True
            events.append(ConnectionEnded(ErrorCode.NO_ERROR))
        elif kind == PRIORITY:
            self._priority(stream_id, payload, events)
        elif kind == PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "clients cannot push")
        # Unknown frame types are ignored (RFC 9113 section 4.1).

    def _priority(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR, events)
            return
        state = self._state(stream_id)
        if read_u31(payload) == stream_id:  # section 5.3.1: a stream cannot depend on itself
            if state is _IDLE:  # no RST_STREAM on an idle stream (section 6.4)
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        self._transition(stream_id, state, _RECV_PRIORITY)

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = unpadded(flags, payload)
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if start + 5 > end:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dependent = read_u31(payload[start : start + 4]) == stream_id
            start += 5
        block = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, self_dependent, block, events)
        else:
            self._continuing = (stream_id, flags, self_dependent, bytearray(block))
            self._check_block_size(len(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, self_dependent, block = self._continuing
        block += payload
        self._check_block_size(len(block))
        if flags & END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, first_flags, self_dependent, bytes(block), events)

    def _check_block_size(self, size: int) -> None:
        if size > self.max_header_bytes:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block larger than advertised")

    def _header_block(
        self, stream_id: int, flags: int, self_dependent: bool, block: bytes, events: list[Event]
    ) -> None:
        # Decode first, whatever becomes of the stream: the HPACK table must stay in step with the client's.
        headers = self.decoder.decode(block, self.max_header_bytes)
        if self._inline_pending and stream_id <= self.highest_stream:  # perhaps one of theirs: answer them first
            self._answer_inline(events)
        # Above the highest stream and not reset by us: idle (what _state finds), the common case without the call.
        state = (
            _IDLE
            if stream_id > self.highest_stream and stream_id not in self._reset_locally
            else self._state(stream_id)
        )
        if state is _IDLE:
            self._new_stream(stream_id, flags, self_dependent, headers, events)
            return
        if self._transition(stream_id, state, _RECV_HEADERS) is None:
            return
        # Trailers: allowed to end a body, and ignored.
        if not flags & END_STREAM or self_dependent:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        self._remote_end(stream_id, self.streams[stream_id], events)

    def _new_stream(
        self, stream_id: int, flags: int, self_dependent: bool, headers: list[tuple[bytes, bytes]], events: list[Event]
    ) -> None:
        if not stream_id & 1:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "client streams have odd numbers")
        if stream_id <= self.highest_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "stream ids must increase")
        if stream_id == self.highest_stream + 2:  # the next id: nothing skipped (what _open finds)
            self.highest_stream = stream_id
        else:
            self._open(stream_id)
        if self.going_away or len(self.streams) + len(self._inline_pending) >= self.max_streams:
            self._reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        fields = self._fields(headers)
        if fields is None or self_dependent:
            self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        if flags & END_STREAM and self.inline is not None and b"content-length" not in fields:
            # A whole request without a body (a DoH GET): answered at the end of the read (_answer_inline), with
            # the other requests of the read, without a stream object unless it must wait.
            self._inline_pending.append((stream_id, fields))
            return
        stream = Stream(self._peer_window, self.max_body, fields, self._now)
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
        if flags & END_STREAM:
            self._remote_end(stream_id, stream, events)
        elif not stream.too_large and fields.get(b"expect", b"").lower() == b"100-continue":
            # The interim response the client waits for before it sends the body (RFC 9110 section 10.1.1).
            self._out.append(frame(HEADERS, END_HEADERS, stream_id, encode_headers(100, [])))

    def _answer_inline(self, events: list[Event]) -> None:
        """Answer the read's requests without a body through ``inline``: the caller's answer in one piece when it
        has one that fits the windows (no stream, no event, no respond()); else the stream as any request's, its
        Request event or the answer waiting for window. Called before any frame that may be for one of them is
        handled, so each is in the state it would be in had it been answered at once."""
        pending = self._inline_pending
        self._inline_pending = []
        inline = self.inline
        assert inline is not None
        for stream_id, fields in pending:
            answer = inline(stream_id, fields[b":method"], fields[b":path"])
            if answer is not None:
                frames = self._whole_answer(stream_id, self._peer_window, *answer)
                if frames is not None:
                    self.answered += 1
                    if self._out:
                        frames = b"".join(self._out) + frames
                        self._out.clear()
                    self._chunks.append(frames)
                    continue
            stream = Stream(self._peer_window, self.max_body, fields, self._now)
            self.streams[stream_id] = stream
            if answer is None:
                self._remote_end(stream_id, stream, events)  # its Request event
            else:
                stream.state = _HALF_CLOSED_REMOTE
                self.respond(stream_id, 200, [], answer[1], answer[0])  # the long way: waits for window

    def _fields(self, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
        """:func:`_request_fields`, checked once per list the decoder shares, and once per shape of block."""
        varying = self.decoder.varying
        if varying is None:
            # The decoder's lists are shared (its memo: the same block as an earlier request's), so checked once
            # each. By identity; the entry holds the list, so no other list takes its id meanwhile.
            checked = self._checked.get(id(headers))
            if checked is not None:
                return checked[1]
            fields = _request_fields(headers)
            if len(self._checked) >= _CHECKED_MEMO:
                self._checked.clear()
            self._checked[id(headers)] = (headers, fields)
            return fields
        # A block of the decoder's shapes: the same fields as the shape's list but for the one literal's value.
        shape, position = varying
        if shape is not self._shape:
            self._shape = shape
            self._shape_fields = _request_fields(shape)
            name = shape[position][0]
            if sum(1 for other, _ in shape if other == name) != 1 or name == b"te":
                self._shape_fields = None  # its value is not simply the field's: take the general way
        if self._shape_fields is None:
            return _request_fields(headers)
        name, value = headers[position]
        if name == b":path" and not value:
            return None
        fields = self._shape_fields.copy()
        fields[name] = value
        return fields

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        size = len(payload)
        stream = self.streams.get(stream_id)
        # The common case first: a request body on an open stream, unpadded (the table's OPEN + DATA is OPEN).
        if stream is None or stream.state is not _OPEN or flags & PADDED:
            if not stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
            start, end = unpadded(flags, payload)
            state = self._state(stream_id)
            if state is _IDLE:
                self._transition(stream_id, state, _RECV_DATA)  # raises
            self._take_connection_window(size)
            if self._transition(stream_id, state, _RECV_DATA) is None:
                self._consumed(size)  # dropped: its window comes back at once
                return
            stream = self.streams[stream_id]
        else:
            start, end = 0, size
            self._take_connection_window(size)
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        if start or end != size:
            # Give padding back at once: the stream window is sized for the largest body, not for padding.
            stream.receive_window += size - (end - start)
            self._out.append(window_update(stream_id, size - (end - start)))
            self._consumed(size - (end - start))
        if stream.too_large:
            self._consumed(end - start)
        else:
            chunk = payload[start:end]
            self.body_bytes += len(chunk)
            if not stream.body:
                stream.body = chunk
            else:
                if isinstance(stream.body, bytes):
                    stream.body = bytearray(stream.body)
                stream.body += chunk
            if len(stream.body) > self.max_body:
                stream.too_large = True
                self._release(stream)
                events.append(BodyTooLarge(stream_id))
        if flags & END_STREAM:
            self._remote_end(stream_id, stream, events)

    def _take_connection_window(self, size: int) -> None:
        # Every DATA frame counts against the connection window, whatever its stream (section 6.9).
        self._receive_window -= size
        if self._receive_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")

    def _remote_end(self, stream_id: int, stream: Stream, events: list[Event]) -> None:
        # The common case without the table: a request ends on an open stream.
        state = (
            _HALF_CLOSED_REMOTE
            if stream.state is _OPEN
            else self._transition(stream_id, stream.state, _RECV_END_STREAM)
        )
        if state is None:
            return
        if state is _CLOSED:  # the end of a body we had answered early (413)
            self._close_stream(stream_id)
            return
        stream.state = state
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
        if stream.body:
            self._release(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self._settings_seen = True
        for code, value in read_settings(payload):
            if code == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif code == SETTINGS_MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad maximum frame size")
                self._peer_max_frame = value
            elif code == SETTINGS_ENABLE_PUSH and value > 1:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad ENABLE_PUSH")
            # Header table size: we never index our responses, so any size suits us. Others: nothing to do.
        self._out.append(frame(SETTINGS, ACK, 0))
        self._flush_all()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
        increment = read_u31(payload)
        if not stream_id:
            if not increment:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "zero window increment")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_all()
            return
        if self._transition(stream_id, self._state(stream_id), _RECV_WINDOW_UPDATE) is None:
            return
        stream = self.streams[stream_id]
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
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self._transition(stream_id, self._state(stream_id), _RECV_RST_STREAM) is None:
            return
        self._close_stream(stream_id)
        events.append(StreamReset(stream_id))
        self.resets += 1
        if self.resets > self.reset_allowance + self.answered:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "too many stream resets")

    # Sending

    def respond(
        self, stream_id: int, status: int, headers: list[tuple[str, str]], body: bytes, block: bytes | None = None
    ) -> None:
        """Answer a stream (a no-op when the client reset it meanwhile). An empty body ends the stream with
        the headers (HEAD, or errors without a body). ``block``: the status and headers HPACK-encoded already
        (:func:`encode_headers`)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.outbound is not None or self.ended:
            return
        self.answered += 1
        if block is None:
            block = encode_headers(status, headers)
        frames = (
            self._whole_answer(stream_id, stream.send_window, block, body)
            if stream.state is _HALF_CLOSED_REMOTE
            else None
        )
        if frames is not None:
            self._out.append(frames)
            del self.streams[stream_id]
            if stream.body:  # released already when the request ended, but for a 413 sent early
                self._release(stream)
            return
        if not body:
            self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
            self._sent_all(stream_id, stream)
            return
        self._out.append(frame(HEADERS, END_HEADERS, stream_id, block))
        stream.outbound = body
        self._flush(stream_id, stream)

    def _whole_answer(self, stream_id: int, stream_window: int, block: bytes, body: bytes) -> bytes | None:
        """The common case, a whole answer to a whole request in one piece (HEADERS, then DATA ending the stream),
        its window taken; None when it does not fit the windows and frame size, or has no body."""
        size = len(body)
        if (
            0 < size <= self._send_window
            and size <= stream_window
            and size <= self._peer_max_frame
            and len(block) <= self._peer_max_frame
        ):
            self._send_window -= size
            length = len(block)
            return (
                FRAME_HEADER.pack(length >> 8, length & 0xFF, HEADERS, END_HEADERS, stream_id)
                + block
                + FRAME_HEADER.pack(size >> 8, size & 0xFF, DATA, END_STREAM, stream_id)
                + body
            )
        return None

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
            self._out.append(goaway(self.highest_stream, code))
        else:
            self._end(code, "closed")

    def _end(self, code: ErrorCode, reason: str) -> None:
        self.ended = True
        self.streams.clear()
        self.body_bytes = 0
        self._out.append(goaway(self.highest_stream, code, reason.encode()))

    def _stream_error(self, stream_id: int, code: ErrorCode, events: list[Event]) -> None:
        """Reset a stream the client broke; its answer, if one is in preparation, is dropped."""
        stream = self.streams.get(stream_id)
        self._reset(stream_id, code)
        if stream is not None and stream.state is _HALF_CLOSED_REMOTE:
            events.append(StreamReset(stream_id))

    def _reset(self, stream_id: int, code: ErrorCode) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._release(stream)
        self._reset_locally[stream_id] = None
        if len(self._reset_locally) > _RESET_MEMORY:
            del self._reset_locally[next(iter(self._reset_locally))]
        self._out.append(rst_stream(stream_id, code))

    def _flush_all(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.outbound is not None:
                self._flush(stream_id, stream)

    def _flush(self, stream_id: int, stream: Stream) -> None:
        data = stream.outbound
        if not data:
            return
        while data:
            size = min(len(data), self._send_window, stream.send_window, self._peer_max_frame)
            if size <= 0:
                if data is not stream.outbound or not stream.stalled_since:  # stalled anew
                    stream.stalled_since = self.clock()
                stream.outbound = data
                return
            last = size == len(data)
            self._out.append(frame(DATA, END_STREAM if last else 0, stream_id, data[:size]))
            self._send_window -= size
            stream.send_window -= size
            data = data[size:]
        self._sent_all(stream_id, stream)

    def _sent_all(self, stream_id: int, stream: Stream) -> None:
        # When we answered before the client finished sending (413), the stream stays half-closed (local)
        # until the client ends or resets it: what it still sends is ignored. No RST_STREAM(NO_ERROR) then,
        # though section 8.1 allows one: curl reports the response as failed when it gets one.
        state = self._transition(stream_id, stream.state, _SEND_END_STREAM)
        if state is _CLOSED:
            self._close_stream(stream_id)
        elif state is not None:
            stream.state = state
            stream.outbound = None
            self._release(stream)


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
    if b":method" not in fields or not fields.get(b":path") or b":scheme" not in fields:
        return None  # section 8.3.1: :path must not be empty for https URIs
    return fields
