"""Events: what a batch of received bytes meant for the caller of :class:`H2ServerConnection.receive`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: one per request, and a frozen dataclass takes twice as long to make
class Request:
    """A complete request: headers and the whole body. Read, never changed."""

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
    """The stream ended before we answered it (the client reset it, or broke the stream's rules and we reset
    it): drop whatever answer is in preparation."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The connection is over (the client sent GOAWAY, or broke the protocol and we sent one): send what
    ``data_to_send`` holds, then close."""

    error_code: int


Event = Request | BodyTooLarge | StreamReset | ConnectionEnded
