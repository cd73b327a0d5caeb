"""The DNS stream framer against the plain reading of the same bytes: however the stream is cut into reads
(whole messages, a message split anywhere, several per read), the same messages come out, in order, and what is
held between reads is the start of the next one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns.transport.framing import FramingError, LengthPrefixedFramer, frame


def _messages(stream: bytes) -> tuple[list[bytes], int]:
    """The whole messages at the start of STREAM, and the length of what is left."""
    messages, offset = [], 0
    while len(stream) - offset >= 2:
        length = int.from_bytes(stream[offset : offset + 2], "big")
        if len(stream) - offset - 2 < length:
            break
        messages.append(stream[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return messages, len(stream) - offset


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    st.binary(max_size=3),
    st.lists(st.integers(0, 60), max_size=8),
)
def test_any_cut_of_the_stream_gives_its_messages(messages: list[bytes], tail: bytes, cuts: list[int]) -> None:
    # The messages, then the start of one that never completes (5 bytes announced, at most 3 sent).
    stream = b"".join(frame(message) for message in messages) + (b"\x00\x05" + tail if tail else b"")
    framer, got, offset = LengthPrefixedFramer(), [], 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[offset : offset + cut]
        offset += len(chunk)
        got += framer.feed(chunk)
        expected, left = _messages(stream[:offset])
        assert got == expected and framer.buffered == left
        assert all(type(message) is bytes for message in got)
    assert got == messages


def test_a_zero_length_message_is_refused() -> None:
    with pytest.raises(FramingError):
        LengthPrefixedFramer().feed(frame(b"ok") + b"\0\0")
