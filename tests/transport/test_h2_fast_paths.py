"""The hand-written fast paths of the DoH/HTTP/2 core against the general ones they stand in for (issue 20): HPACK
blocks decoded by their shape (one varying literal, a DoH GET's ``:path``), the fields of such a block, the C
Huffman decoder, a whole answer sent in one piece, the GET target read by hand, and the memo of checked queries."""

from __future__ import annotations

import base64

import dns.edns
import dns.message
import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ztdns.transport import doh
from ztdns.transport.http2 import H2ServerConnection, ProtocolError, Request
from ztdns.transport.http2 import huffman as our_huffman
from ztdns.transport.http2.connection import _request_fields
from ztdns.transport.http2.frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from ztdns.transport.http2.hpack import HpackDecoder, _hpack_integer, encode_headers
from ztdns.transport.http2.stream import TABLE, StreamInput, StreamState
from ztdns.wire.records import is_query, wants_padding

from .test_http2 import GET_PATH, client, exchange, frame_strategy, get

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _string(value: bytes, huffman: bool) -> bytes:
    raw = HUFFMAN.encode(value) if huffman else value
    return _hpack_integer(len(raw), 7, 0x80 if huffman else 0) + raw


# One block of a sequence: ("table", headers) adds entries with incremental indexing (the hpack library's encoder);
# ("varying", name index, never indexed?, value, Huffman?) is references around one literal without indexing.
_block = st.one_of(
    st.tuples(
        st.just("table"), st.lists(st.tuples(st.sampled_from([b"x-a", b"cookie"]), st.binary(max_size=8)), max_size=2)
    ),
    st.tuples(
        st.just("varying"),
        st.sampled_from([4, 19, 58]),  # :path, accept, user-agent
        st.booleans(),
        st.binary(max_size=150),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_block, min_size=1, max_size=12), st.sampled_from([b"\x82\x87\xbe", b"\x82\xbf", b""]))
def test_blocks_decoded_by_their_shape_mean_what_the_hpack_library_reads(
    blocks: list[tuple[object, ...]], around: bytes
) -> None:
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), HpackDecoder()
    first = encoder.encode([(b":authority", b"dns.test"), (b"user-agent", b"dnsperf")])  # dynamic entries 62, 63
    assert ours.decode(first, 65536) == reference.decode(first, raw=True)
    shaped, sent = 0, list[bytes]()
    for item in blocks:
        if item[0] == "table":
            block = encoder.encode(item[1])  # type: ignore[arg-type]
        else:
            _, index, never, value, huffman = item
            assert isinstance(index, int) and isinstance(value, bytes) and isinstance(huffman, bool)
            literal = bytes([(0x10 if never else 0) | index]) + _string(value, huffman)
            block = around + literal + around[::-1]
        sent.append(block)
        try:
            expected = reference.decode(block, raw=True)
        except hpack.HPACKError:
            with pytest.raises(ProtocolError):
                ours.decode(block, 65536)
            return
        assert ours.decode(block, 65536) == expected
        shaped += ours.varying is not None
    if all(item[0] == "varying" for item in blocks) and len({item[1:3] for item in blocks}) == 1:
        # The first block taught the shape (and is remembered whole): the others were decoded by it.
        assert shaped == sum(block != sent[0] for block in sent)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=140), st.booleans(), st.integers(-3, 3), st.sampled_from([b"\x82\x87", b""]))
def test_a_shaped_block_whose_string_does_not_fit_is_read_as_the_general_decoder_reads_it(
    value: bytes, huffman: bool, error: int, around: bytes
) -> None:
    """A block that starts and ends as a known shape but whose value string's length is off (past the block, short
    of the suffix, or a Huffman string that does not decode): the shape's inline reading of the string must come
    to what the general decoder does with the same block."""
    taught = around + b"\x04" + _string(b"/dns-query?dns=AAAB", huffman) + around[::-1]
    string = _string(value, huffman)
    length = string[0] & 0x7F
    if length < 0x7F and 0 <= length + error < 0x7F:  # else a two-byte length, or out of range: left as it is
        string = bytes([(string[0] & 0x80) | (length + error)]) + string[1:]
    block = around + b"\x04" + string + around[::-1]
    shaped, general = HpackDecoder(), HpackDecoder()
    shaped.decode(taught, 65536)
    try:
        expected: list[tuple[bytes, bytes]] | None = general.decode(block, 65536)
    except ProtocolError:
        expected = None
    if expected is None:
        with pytest.raises(ProtocolError):
            shaped.decode(block, 65536)
    else:
        assert shaped.decode(block, 65536) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b":path", b"te", b"accept", b":method"]),
    st.lists(st.sampled_from([b"", b"/dns-query?dns=AAAB", b"trailers", b"GET", b"x"]), min_size=1, max_size=5),
    st.booleans(),
)
def test_fields_of_shaped_blocks_are_those_of_the_general_check(name: bytes, values: list[bytes], twice: bool) -> None:
    """The connection checks a shape's fields once and then only the varying value: the same verdict and fields
    as :func:`_request_fields` on the whole list, for every value (an empty ``:path``, a bad ``te``)."""
    server = H2ServerConnection(max_streams=10, max_header_bytes=16384, max_body=65535)
    static = {b":path": 4, b"te": 0, b"accept": 19, b":method": 2}
    for value in values:
        if static[name]:
            literal = bytes([static[name]]) + _string(value, huffman=False)
        else:  # a literal name: not a shape (the name is not a reference)
            literal = b"\x00" + _string(name, huffman=False) + _string(value, huffman=False)
        block = b"\x82\x87\x84" + (b"\x41\x08dns.test" if twice else b"") + literal
        headers = server.decoder.decode(block, 16384)
        assert server._fields(headers) == _request_fields(headers)


def test_a_request_decoded_by_its_shape_is_the_request() -> None:
    """GETs whose paths differ (as dnsperf's do: the query ID) through the whole core: each Request carries its
    own path, though all but the first were decoded by their shape."""
    c = client()
    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    exchange(c, server)
    paths = [GET_PATH[:-4] + suffix for suffix in ("AAAA", "AAAB", "BBBB", "AAAA")]
    for path in paths:
        get(c, path)
    events = server.receive(c.data_to_send())
    assert [event.path for event in events if isinstance(event, Request)] == paths


@pytest.mark.skipif(not our_huffman.NATIVE, reason="the _huffman extension is not built")
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=40))
def test_native_huffman_decoding_is_the_python_one(data: bytes, noise: bytes) -> None:
    for encoded in (HUFFMAN.encode(data), noise, HUFFMAN.encode(data) + noise):
        try:
            expected: bytes | str = our_huffman.huffman_decode_python(encoded)
        except ProtocolError as exc:
            expected = str(exc)
        try:
            got: bytes | str = our_huffman.huffman_decode(encoded)
        except ProtocolError as exc:
            got = str(exc)
        assert got == expected


def test_an_answer_in_one_piece_is_the_frames_of_the_general_way() -> None:
    c = client()
    server = H2ServerConnection(max_streams=10, max_header_bytes=16384, max_body=65535)
    exchange(c, server)
    stream_id = get(c)
    assert server.receive(c.data_to_send())
    headers = [("content-type", "application/dns-message"), ("content-length", "5"), ("cache-control", "max-age=9")]
    block = encode_headers(200, headers)
    server.respond(stream_id, 200, headers, b"12345", block)
    expected = frame(HEADERS, END_HEADERS, stream_id, block) + frame(DATA, END_STREAM, stream_id, b"12345")
    assert server.data_to_send() == expected
    assert stream_id not in server.streams and not server.busy()


_TARGET = st.text(alphabet="/dnsquery?=&%+AB09-_x", max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["/dns-query", "/dns-query?dns=", "/dns-query?", "/dns", ""]), _TARGET)
def test_a_get_target_read_by_hand_is_what_the_general_parser_reads(start: str, rest: str) -> None:
    target = start + rest
    by_hand = doh.decode_request("GET", target, None, b"", "/dns-query")
    value = doh.dns_parameter(target, "/dns-query")
    if isinstance(value, doh.HttpResponse):
        assert isinstance(by_hand, doh.HttpResponse) and by_hand.status == value.status
        return
    # What decode_request makes of that value: the general path from here on.
    general = doh.decode_request("GET", "/dns-query?dns=" + value.replace("%", "%25"), None, b"", "/dns-query")
    if isinstance(general, bytes):
        assert by_hand == general
    else:
        assert isinstance(by_hand, doh.HttpResponse) and by_hand.status == general.status


def _padded_query() -> bytes:
    query = dns.message.make_query(
        "pad.example.", "A", use_edns=0, options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"")]
    )
    return query.to_wire()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=60), st.integers(0, 0xFFFF))
def test_checked_queries_are_what_is_query_and_wants_padding_say(noise: bytes, query_id: int) -> None:
    plain = dns.message.make_query("www.example.", "A").to_wire()
    for wire in (noise, plain, _padded_query(), plain + noise, query_id.to_bytes(2, "big") + plain[2:]):
        for _ in range(2):  # the second time from the memo
            checked = doh._checked_query(wire)
            assert checked == (wants_padding(wire) if is_query(wire) else None)


def test_a_padded_query_gets_a_padded_answer_through_the_memo() -> None:
    query = _padded_query()
    answer = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    for _ in range(2):
        wire = doh.decode_request(
            "GET", "/dns-query?dns=" + base64.urlsafe_b64encode(query).rstrip(b"=").decode(), None, b"", "/dns-query"
        )
        assert wire == query
        assert len(doh.dns_response(query, answer).body) % 468 == 0


def test_the_state_table_agrees_with_the_shortcuts_the_core_takes() -> None:
    """DATA on an open stream and a request's end skip the table: these are its entries."""
    assert TABLE[StreamState.OPEN][StreamInput.RECV_DATA] is StreamState.OPEN
    assert TABLE[StreamState.OPEN][StreamInput.RECV_END_STREAM] is StreamState.HALF_CLOSED_REMOTE
    assert TABLE[StreamState.HALF_CLOSED_REMOTE][StreamInput.SEND_END_STREAM] is StreamState.CLOSED


def _base64url_reference(value: str) -> bytes | None:
    """What the GET path did before doh.base64url: the alphabet deleted to see what is left, then the library."""
    encoded = value.encode("ascii", "replace")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if not encoded or encoded.translate(None, alphabet) or len(encoded) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
    except ValueError:
        return None


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="ABCXYZabcxyz0189-_+/=% \n\xe9", max_size=24),
        st.binary(max_size=40).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")),
        st.text(max_size=12),
    )
)
def test_base64url_reads_what_the_library_reads(value: str) -> None:
    assert doh.base64url(value) == _base64url_reference(value)


def _served(
    frames_in: list[tuple[int, int, int, bytes]], header_lane: bool, inline: bool = False
) -> tuple[list[object], bytes, int]:
    """What a core makes of FRAMES_IN, one read per frame, each request answered: its events (a request answered
    inline counts as its Request event), its bytes out and the streams it still holds."""
    core = H2ServerConnection(max_streams=4, max_header_bytes=200, max_body=50)
    core.header_lane = header_lane
    events: list[object] = list(core.receive(PREFACE + frame(SETTINGS, 0, 0)))
    out: list[bytes] = []
    block = encode_headers(200, [("content-type", "x")])

    def answer(stream_id: int, method: bytes, path: bytes) -> tuple[bytes, bytes] | None:
        if method == b"POST":  # taken the general way
            return None
        events.append(Request(stream_id, method.decode("latin-1"), path.decode("latin-1"), None, b""))
        return block, b"answer"

    if inline:
        core.inline = answer
    for kind, flags, stream_id, payload in frames_in:
        for event in core.receive(frame(kind, flags, stream_id, payload)):
            events.append(event)
            if isinstance(event, Request):
                core.respond(event.stream_id, 200, [("content-type", "x")], b"answer")
        out += core.chunks_to_send()
    return events, b"".join(out) + core.data_to_send(), len(core.streams)


# Mostly request header blocks, on ids that go up, repeat and go down, with and without END_HEADERS, END_STREAM,
# PADDED and PRIORITY; and any other frame of the general strategy between them.
_headers_frames = st.tuples(
    st.just(HEADERS),
    st.sampled_from([0x4, 0x5, 0x0, 0x1, 0xC, 0x24, 0x25, 0x2D]),
    st.sampled_from([1, 3, 5, 7, 9, 2, 0]),
    st.sampled_from(
        [
            hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":path", "/q"), (":authority", "a")]),
            b"\x82\x87\x84",
            b"\x00\x05bogus",
            b"",
        ]
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_headers_frames, frame_strategy), max_size=10))
def test_header_blocks_taken_past_the_frame_dispatch_mean_what_the_dispatch_makes_of_them(
    frames_in: list[tuple[int, int, int, bytes]],
) -> None:
    assert _served(frames_in, header_lane=True) == _served(frames_in, header_lane=False)


_methods = st.sampled_from(["GET", "POST", "HEAD"])
_inline_headers = st.tuples(
    st.just(HEADERS),
    st.sampled_from([0x4, 0x5, 0x1, 0x25, 0x2D]),
    st.sampled_from([1, 3, 5, 7, 9, 2]),
    st.builds(
        lambda method, path, extra: hpack.Encoder().encode(
            [(":method", method), (":scheme", "https"), (":path", path), (":authority", "a"), *extra]
        ),
        _methods,
        st.sampled_from(["/q", GET_PATH, ""]),
        st.sampled_from([[], [("content-length", "0")], [("content-length", "3")], [("Bad", "x")]]),
    ),
)
_window_frames = st.tuples(
    st.sampled_from([WINDOW_UPDATE, SETTINGS, RST_STREAM]),
    st.just(0),
    st.sampled_from([0, 1, 3]),
    st.sampled_from([b"\x00\x00\x00\x05", b"\x00\x04\x00\x00\x00\x00", b"\x00\x04\x00\x00\x00\x03", b""]),
)


_GET_BLOCK = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":path", "/q"), (":authority", "a")])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_inline_headers, _window_frames, frame_strategy), max_size=10))
@example([(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00\x03"), (HEADERS, 0x5, 1, _GET_BLOCK)])  # a stream window too small
@example([(HEADERS, 0x5, 1, _GET_BLOCK), (HEADERS, 0x5, 1, _GET_BLOCK), (RST_STREAM, 0, 1, b"\x00\x00\x00\x08")])
def test_requests_answered_inline_are_answered_as_their_events_are(
    frames_in: list[tuple[int, int, int, bytes]],
) -> None:
    """A request without a body answered at the end of its read (H2ServerConnection.inline, the DoH GET lane):
    the same requests answered, the same bytes out (windows, stalls, resets and all) and the same streams held as
    when it comes as an event and is answered at once."""
    assert _served(frames_in, header_lane=True, inline=True) == _served(frames_in, header_lane=True)


def test_gets_of_a_read_are_answered_before_a_frame_for_one_of_them() -> None:
    """The inline lane answers a read's GETs at its end, or before a later frame of the read that may be for one
    of them: a GET reset in the read that brought it is a reset stream (rapid reset counts it), not one ignored as
    closed; the GETs after it wait for the end of the read."""
    core = H2ServerConnection(max_streams=4, max_header_bytes=200, max_body=50, reset_allowance=1)
    asked: list[int] = []

    def answer(stream_id: int, method: bytes, path: bytes) -> tuple[bytes, bytes] | None:
        asked.append(stream_id)
        return None if stream_id == 1 else (encode_headers(200, []), b"answer")  # stream 1: for a task

    core.inline = answer
    core.receive(PREFACE + frame(SETTINGS, 0, 0))
    core.data_to_send()
    events = core.receive(
        frame(HEADERS, END_HEADERS | END_STREAM, 1, _GET_BLOCK)
        + frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08")
        + frame(HEADERS, END_HEADERS | END_STREAM, 3, _GET_BLOCK)
        + frame(HEADERS, END_HEADERS | END_STREAM, 5, _GET_BLOCK)
    )
    assert asked == [1, 3, 5] and core.resets == 1 and core.answered == 2 and not core.streams
    assert [type(event).__name__ for event in events] == ["Request", "StreamReset"]
    chunks = core.chunks_to_send()
    assert len(chunks) == 2 and all(chunk.endswith(b"answer") for chunk in chunks)
