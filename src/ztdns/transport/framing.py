"""DNS over a byte stream (RFC 1035 section 4.2.2, RFC 7766, RFC 7858): two-byte length, then the message."""

from __future__ import annotations


class FramingError(Exception):
    """The peer sent something that is not a DNS stream (a zero-length message)."""


class LengthPrefixedFramer:
    """Sans-IO: ``feed(bytes)`` returns the complete messages received so far, in order."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            length = (buffer[offset] << 8) | buffer[offset + 1]
            if length == 0:
                raise FramingError("zero-length DNS message")
            if end - offset - 2 < length:
                break
            messages.append(bytes(buffer[offset + 2 : offset + 2 + length]))
            offset += 2 + length
        if offset:
            del buffer[:offset]
        return messages

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held (a query in progress: the query timeout runs)."""
        return len(self._buffer)


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message
