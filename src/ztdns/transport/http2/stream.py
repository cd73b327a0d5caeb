"""Stream states (RFC 9113 section 5.1) as an explicit transition table, after ``h2/stream.py``: for each state
and each frame received (or end sent) on a stream, the next state, nothing (the frame is ignored), or the error
the RFC requires (a stream error resets the stream, a connection error ends the connection).

``RESET_LOCALLY`` is ``closed`` after we sent RST_STREAM: frames the client sent before it saw our reset are
ignored (section 5.1, "closed"), whereas frames on a stream the client itself ended or reset are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ztdns.transport.http2.frames import ErrorCode


class StreamState(IntEnum):
    IDLE = 0
    OPEN = 1
    HALF_CLOSED_REMOTE = 2  # the client sent END_STREAM: the request is complete
    HALF_CLOSED_LOCAL = 3  # we answered (413) before the client finished sending
    CLOSED = 4
    RESET_LOCALLY = 5


class StreamInput(IntEnum):
    RECV_HEADERS = 0
    RECV_DATA = 1
    RECV_END_STREAM = 2  # the END_STREAM flag of a HEADERS or DATA frame, after the frame itself
    RECV_RST_STREAM = 3
    RECV_WINDOW_UPDATE = 4
    RECV_PRIORITY = 5
    SEND_END_STREAM = 6  # the last frame of our response went out
    SEND_RST_STREAM = 7


@dataclass(frozen=True, slots=True)
class StreamViolation:
    """Reset the stream with RST_STREAM(code); the connection goes on."""

    code: ErrorCode


@dataclass(frozen=True, slots=True)
class ConnectionViolation:
    """End the connection with GOAWAY(code)."""

    code: ErrorCode


Outcome = StreamState | StreamViolation | ConnectionViolation | None  # None: ignore the frame

S, In = StreamState, StreamInput
_STREAM_CLOSED = StreamViolation(ErrorCode.STREAM_CLOSED)
_PROTOCOL = ConnectionViolation(ErrorCode.PROTOCOL_ERROR)

TRANSITIONS: dict[tuple[StreamState, StreamInput], Outcome] = {
    # idle: only HEADERS opens a stream; PRIORITY may come first (section 5.1); the rest is PROTOCOL_ERROR.
    (S.IDLE, In.RECV_HEADERS): S.OPEN,
    (S.IDLE, In.RECV_DATA): _PROTOCOL,
    (S.IDLE, In.RECV_END_STREAM): _PROTOCOL,
    (S.IDLE, In.RECV_RST_STREAM): _PROTOCOL,
    (S.IDLE, In.RECV_WINDOW_UPDATE): _PROTOCOL,
    (S.IDLE, In.RECV_PRIORITY): S.IDLE,
    (S.IDLE, In.SEND_END_STREAM): ConnectionViolation(ErrorCode.INTERNAL_ERROR),
    (S.IDLE, In.SEND_RST_STREAM): S.RESET_LOCALLY,
    # open: the request is still coming. A second HEADERS is trailers (checked by the connection).
    (S.OPEN, In.RECV_HEADERS): S.OPEN,
    (S.OPEN, In.RECV_DATA): S.OPEN,
    (S.OPEN, In.RECV_END_STREAM): S.HALF_CLOSED_REMOTE,
    (S.OPEN, In.RECV_RST_STREAM): S.CLOSED,
    (S.OPEN, In.RECV_WINDOW_UPDATE): S.OPEN,
    (S.OPEN, In.RECV_PRIORITY): S.OPEN,
    (S.OPEN, In.SEND_END_STREAM): S.HALF_CLOSED_LOCAL,
    (S.OPEN, In.SEND_RST_STREAM): S.RESET_LOCALLY,
    # half-closed (remote): the client may send only WINDOW_UPDATE, PRIORITY and RST_STREAM (section 5.1).
    (S.HALF_CLOSED_REMOTE, In.RECV_HEADERS): _STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, In.RECV_DATA): _STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, In.RECV_END_STREAM): _STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, In.RECV_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, In.RECV_WINDOW_UPDATE): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, In.RECV_PRIORITY): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, In.SEND_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, In.SEND_RST_STREAM): S.RESET_LOCALLY,
    # half-closed (local): we are done; the client may finish its body, which we do not read.
    (S.HALF_CLOSED_LOCAL, In.RECV_HEADERS): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, In.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, In.RECV_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, In.RECV_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, In.RECV_WINDOW_UPDATE): None,
    (S.HALF_CLOSED_LOCAL, In.RECV_PRIORITY): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, In.SEND_END_STREAM): ConnectionViolation(ErrorCode.INTERNAL_ERROR),
    (S.HALF_CLOSED_LOCAL, In.SEND_RST_STREAM): S.RESET_LOCALLY,
    # closed after both ends, or after the client's RST_STREAM: DATA is a stream error and HEADERS a
    # connection error of type STREAM_CLOSED (section 5.1); WINDOW_UPDATE, RST_STREAM and PRIORITY may
    # still be in flight and are ignored.
    (S.CLOSED, In.RECV_HEADERS): ConnectionViolation(ErrorCode.STREAM_CLOSED),
    (S.CLOSED, In.RECV_DATA): _STREAM_CLOSED,
    (S.CLOSED, In.RECV_END_STREAM): _STREAM_CLOSED,
    (S.CLOSED, In.RECV_RST_STREAM): None,
    (S.CLOSED, In.RECV_WINDOW_UPDATE): None,
    (S.CLOSED, In.RECV_PRIORITY): None,
    (S.CLOSED, In.SEND_END_STREAM): None,
    (S.CLOSED, In.SEND_RST_STREAM): None,
    # closed by our RST_STREAM: whatever the client sent before it saw the reset is ignored.
    (S.RESET_LOCALLY, In.RECV_HEADERS): None,
    (S.RESET_LOCALLY, In.RECV_DATA): None,
    (S.RESET_LOCALLY, In.RECV_END_STREAM): None,
    (S.RESET_LOCALLY, In.RECV_RST_STREAM): None,
    (S.RESET_LOCALLY, In.RECV_WINDOW_UPDATE): None,
    (S.RESET_LOCALLY, In.RECV_PRIORITY): None,
    (S.RESET_LOCALLY, In.SEND_END_STREAM): None,
    (S.RESET_LOCALLY, In.SEND_RST_STREAM): None,
}
del S, In
# The same as nested tuples, indexed [state][input]: twice as fast as the dict, on every frame.
TABLE: tuple[tuple[Outcome, ...], ...] = tuple(
    tuple(TRANSITIONS[state, event] for event in StreamInput) for state in StreamState
)


class Stream:
    """One stream that is not closed: its state, flow-control windows, the request so far, and the response
    body still waiting for window."""

    __slots__ = (
        "body",
        "declared_length",
        "headers",
        "outbound",
        "receive_window",
        "send_window",
        "stalled_since",
        "started",
        "state",
        "too_large",
    )

    def __init__(self, send_window: int, receive_window: int, headers: dict[bytes, bytes], started: float) -> None:
        self.state = StreamState.OPEN
        self.started = started  # when its HEADERS came
        self.stalled_since = 0.0  # when its answer last found no window
        self.send_window = send_window
        self.receive_window = receive_window
        self.headers = headers
        self.body: bytes | bytearray = b""  # a bytearray once a second DATA frame comes
        self.declared_length: int | None = None
        self.too_large = False  # we answer 413 and ignore the rest of the body
        self.outbound: bytes | None = None  # response body waiting for flow-control window
