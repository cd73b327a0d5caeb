"""h2spec's server cases (RFC 9113 sections 3.5 to 8.2), replayed against the real DoH listener: raw frames over
TLS with ALPN h2, asserting the connection or stream error the RFC requires. The cases h2spec 2.6 found failing
before the stream-state table (DATA/HEADERS on half-closed or closed streams, lower stream ids, self-dependency,
empty :path) come first; the rest keep what already passed.

h2spec itself is not packaged in Debian; when it is on PATH (built by hand: docs/transports.md),
``test_h2spec_passes_every_case`` runs it too.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass

import dns.message
import pytest

from fixtures.http2 import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Client,
    connect,
    raw,
)
from fixtures.tls import EchoHandler, Pki, listen_config
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.tls import TlsMaterial


def get(name: str) -> list[tuple[str, str]]:
    wire = dns.message.make_query(name, "A").to_wire()
    path = "/dns-query?dns=" + base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
    return [(":method", "GET"), (":scheme", "https"), (":path", path), (":authority", "dns.test")]


GET = get("host.slow.")  # answered after a delay: the stream stays half-closed (remote) meanwhile
FAST_GET = get("host.fast.")  # answered at once
POST = [(":method", "POST"), (":scheme", "https"), (":path", "/dns-query"), (":authority", "dns.test")]


@dataclass(frozen=True)
class Case:
    section: str
    description: str
    run: Callable[[Client], object]  # sends the frames (may await)
    goaway: tuple[int, ...] = ()  # connection error codes accepted
    rst: tuple[int, ...] = ()  # stream error codes accepted (RST_STREAM)


CASES: list[Case] = []


def case(
    section: str, description: str, *, goaway: tuple[int, ...] = (), rst: tuple[int, ...] = ()
) -> Callable[[Callable[[Client], object]], Callable[[Client], object]]:
    def register(run: Callable[[Client], object]) -> Callable[[Client], object]:
        CASES.append(Case(section, description, run, goaway, rst))
        return run

    return register


# 5.1 Stream states: what h2spec found before the transition table.


@case("5.1", "half closed (remote): DATA", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET), raw(DATA, END_STREAM, 1, b"test"))


@case("5.1", "half closed (remote): HEADERS", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET), c.headers(1, GET))


@case("5.1", "closed: DATA after the client's RST_STREAM", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(RST_STREAM, 0, 1, struct.pack(">I", 8)), raw(DATA, END_STREAM, 1, b"x"))


@case("5.1", "closed: HEADERS after the client's RST_STREAM", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(RST_STREAM, 0, 1, struct.pack(">I", 8)), c.headers(1, GET))


@case("5.1", "closed: DATA after the response", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
async def _(c: Client) -> None:
    c.send(c.headers(1, FAST_GET))
    await c.until_stream_closed(1)
    c.send(raw(DATA, END_STREAM, 1, b"test"))


@case("5.1", "closed: HEADERS after the response", goaway=(STREAM_CLOSED,))
async def _(c: Client) -> None:
    c.send(c.headers(1, FAST_GET))
    await c.until_stream_closed(1)
    c.send(c.headers(1, FAST_GET))


@case("6.1", "DATA on a stream the server answered", rst=(STREAM_CLOSED,), goaway=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, FAST_GET), raw(DATA, END_STREAM, 1, b"test"))


@case("5.1.1", "stream id lower than one already used", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(5, GET), c.headers(3, GET))


@case("5.3.1", "HEADERS depending on its own stream", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    block = c.encoder.encode(GET)
    c.send(raw(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 15) + block))


@case("5.3.1", "PRIORITY depending on its own stream", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PRIORITY, 0, 1, struct.pack(">IB", 1, 15)))


@case("8.3.1", "empty :path", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, [*GET[:2], (":path", ""), GET[3]]))


# 5.1 Stream states that already held.


@case("5.1", "idle: DATA", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(DATA, END_STREAM, 1, b"test"))


@case("5.1", "idle: RST_STREAM", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(RST_STREAM, 0, 1, struct.pack(">I", 8)))


@case("5.1", "idle: WINDOW_UPDATE", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))


@case("5.1", "idle: CONTINUATION", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encoder.encode(GET)))


@case("5.1", "half closed (remote): CONTINUATION", goaway=(PROTOCOL_ERROR, STREAM_CLOSED), rst=(STREAM_CLOSED,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET), raw(CONTINUATION, END_HEADERS, 1, c.encoder.encode(GET)))


@case("5.1.1", "even stream id", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(2, GET))


@case("5.1.2", "more concurrent streams than advertised", rst=(REFUSED_STREAM, PROTOCOL_ERROR))
def _(c: Client) -> None:
    c.send(*(c.headers(1 + 2 * i, POST, END_HEADERS) for i in range(101)))


@case("5.4.1", "a connection error ends with GOAWAY", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PING, 0, 1, b"12345678"))


# 4 and 6: frame rules.


@case("4.2", "DATA larger than SETTINGS_MAX_FRAME_SIZE", goaway=(FRAME_SIZE_ERROR,), rst=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(DATA, END_STREAM, 1, b"x" * 16385))


@case("4.3", "invalid header block fragment", goaway=(COMPRESSION_ERROR,))
def _(c: Client) -> None:
    c.send(raw(HEADERS, END_HEADERS | END_STREAM, 1, b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff"))


@case("6.1", "DATA on stream 0", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(DATA, END_STREAM, 0, b"test"))


@case("6.1", "DATA with a pad length past the frame", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(DATA, END_STREAM | PADDED, 1, b"\x06test"))


@case("6.2", "HEADERS on stream 0", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(0, GET))


@case("6.2", "HEADERS with a pad length past the frame", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, b"\xff" + c.encoder.encode(GET)))


@case("6.2", "a header block interrupted by PRIORITY", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET, END_STREAM), raw(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)))


@case("6.3", "PRIORITY on stream 0", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)))


@case("6.3", "PRIORITY of 4 bytes", rst=(FRAME_SIZE_ERROR,), goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(PRIORITY, 0, 1, b"\x00\x00\x00\x03"))


@case("6.4", "RST_STREAM on stream 0", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(RST_STREAM, 0, 0, struct.pack(">I", 8)))


@case("6.4", "RST_STREAM of 3 bytes", goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(RST_STREAM, 0, 1, b"\x00\x00\x08"))


@case("6.5", "SETTINGS ACK with a payload", goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, ACK, 0, struct.pack(">HI", 3, 100)))


@case("6.5", "SETTINGS on a stream", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 1, struct.pack(">HI", 3, 100)))


@case("6.5", "SETTINGS of 3 bytes", goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 0, b"\x00\x03\x00"))


@case("6.5.2", "SETTINGS_ENABLE_PUSH of 2", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 0, struct.pack(">HI", 2, 2)))


@case("6.5.2", "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", goaway=(FLOW_CONTROL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 31)))


@case("6.5.2", "SETTINGS_MAX_FRAME_SIZE below the initial value", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 0, struct.pack(">HI", 5, 16383)))


@case("6.5.2", "SETTINGS_MAX_FRAME_SIZE above 2^24-1", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(SETTINGS, 0, 0, struct.pack(">HI", 5, 1 << 24)))


@case("6.7", "PING on a stream", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PING, 0, 1, b"12345678"))


@case("6.7", "PING of 6 bytes", goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PING, 0, 0, b"123456"))


@case("6.8", "GOAWAY on a stream", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))


@case("6.9", "WINDOW_UPDATE of 0 on the connection", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))


@case("6.9", "WINDOW_UPDATE of 0 on a stream", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))


@case("6.9", "WINDOW_UPDATE of 3 bytes", goaway=(FRAME_SIZE_ERROR,))
def _(c: Client) -> None:
    c.send(raw(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))


@case("6.9.1", "connection window above 2^31-1", goaway=(FLOW_CONTROL_ERROR,))
def _(c: Client) -> None:
    c.send(
        raw(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)), raw(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF))
    )


@case("6.9.1", "stream window above 2^31-1", rst=(FLOW_CONTROL_ERROR,), goaway=(FLOW_CONTROL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFFFFFF)))


@case("6.10", "CONTINUATION after a HEADERS with END_HEADERS", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(CONTINUATION, END_HEADERS, 1, c.encoder.encode([("x", "y")])))


@case("6.10", "CONTINUATION on another stream", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET, END_STREAM), raw(CONTINUATION, END_HEADERS, 3, c.encoder.encode([("x", "y")])))


@case("6.10", "CONTINUATION on stream 0", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, GET, END_STREAM), raw(CONTINUATION, END_HEADERS, 0, c.encoder.encode([("x", "y")])))


# 8: HTTP message rules (malformed requests are stream errors of type PROTOCOL_ERROR).

MALFORMED = {
    "uppercase header name": [*GET, ("X-Test", "ok")],
    "unknown pseudo-header": [*GET, (":test", "ok")],
    "response pseudo-header in a request": [*GET, (":status", "200")],
    "pseudo-header after a regular one": [*GET[:3], ("x-test", "ok"), GET[3]],
    "duplicated :method": [*GET, (":method", "GET")],
    "no :method": GET[1:],
    "no :scheme": [GET[0], *GET[2:]],
    "no :path": [*GET[:2], GET[3]],
    "connection-specific header": [*GET, ("connection", "keep-alive")],
    "TE other than trailers": [*GET, ("te", "gzip")],
}


for _name, _headers in MALFORMED.items():

    @case("8.1.2", _name, rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
    def _(c: Client, headers: list[tuple[str, str]] = _headers) -> None:
        c.send(c.headers(1, headers))


@case("8.1.2.6", "content-length that the body does not match", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, [*POST, ("content-length", "1")], END_HEADERS), raw(DATA, END_STREAM, 1, b"test"))


@case("8.1", "trailers without END_STREAM", rst=(PROTOCOL_ERROR,), goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(c.headers(1, POST, END_HEADERS), raw(DATA, 0, 1, b"test"), c.headers(1, [("trailer", "x")], END_HEADERS))


@case("8.2", "PUSH_PROMISE from a client", goaway=(PROTOCOL_ERROR,))
def _(c: Client) -> None:
    c.send(raw(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + c.encoder.encode(GET)))


async def verify(client: Client, expected: Case) -> str:
    """What the server did, as h2spec judges it: '' when it sent an accepted error, else what came instead."""
    seen: list[tuple[int, int]] = []
    while True:
        got = await client.frame()
        if got is None:
            return f"connection closed without an accepted error after {seen}"
        kind, _, stream, payload = got
        if kind == GOAWAY:
            code = struct.unpack(">I", payload[4:8])[0]
            return "" if code in expected.goaway else f"GOAWAY {code}"
        if kind == RST_STREAM:
            code = struct.unpack(">I", payload)[0]
            if code in expected.rst:
                return ""
            if not (expected.rst == (STREAM_CLOSED,) and stream != 1):
                return f"RST_STREAM {code} on {stream}"
        seen.append((kind, stream))


@pytest.mark.parametrize("expected", CASES, ids=[f"{c.section} {c.description}" for c in CASES])
def test_h2spec_case(pki: Pki, expected: Case) -> None:
    async def body() -> None:
        config = listen_config(pki, "doh")
        listener = await start_doh_listener(config, EchoHandler(delay=5), TlsMaterial.from_config(config))
        try:
            client = await connect(pki, listener.address[1])
            await client.handshake()
            sent = expected.run(client)
            if asyncio.iscoroutine(sent):
                await sent
            problem = await verify(client, expected)
            assert not problem, problem
            client.writer.close()
        finally:
            await listener.close()

    asyncio.run(body())


def test_window_of_one_byte_gets_one_byte_frames(pki: Pki) -> None:
    """6.9.2: after SETTINGS_INITIAL_WINDOW_SIZE=1 the answer comes one byte at a time, as windows allow;
    unknown frame types (5.5) are ignored."""

    async def body() -> None:
        config = listen_config(pki, "doh")
        listener = await start_doh_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        try:
            client = await connect(pki, listener.address[1])
            await client.handshake(struct.pack(">HI", 4, 1))
            client.send(raw(0xFF, 0, 0, b"unknown"), client.headers(1, FAST_GET))
            frames = [await client.frame() for _ in range(2)]
            assert [(f[0], f[2]) for f in frames if f] == [(HEADERS, 1), (DATA, 1)], frames
            assert frames[1] is not None and len(frames[1][3]) == 1
            client.send(raw(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1)))
            more = await client.frame()
            assert more is not None and more[0] == DATA and len(more[3]) == 1
            client.writer.close()
        finally:
            await listener.close()

    asyncio.run(body())


@pytest.mark.skipif(
    shutil.which("h2spec") is None, reason="h2spec is not on PATH (not packaged in Debian: docs/transports.md)"
)
@pytest.mark.slow
def test_h2spec_passes_every_case(pki: Pki) -> None:
    async def body() -> None:
        config = listen_config(pki, "doh")
        listener = await start_doh_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        try:
            process = await asyncio.create_subprocess_exec(
                "h2spec", "-t", "-k", "-S", "-h", "127.0.0.1", "-p", str(listener.address[1]), "-P", "/dns-query",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out = (await asyncio.wait_for(process.communicate(), 120))[0].decode(errors="replace")
        finally:
            await listener.close()
        summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", out)
        assert summary, out
        total, passed, _, failed = map(int, summary.groups())
        assert failed == 0 and passed == total, out

    asyncio.run(body())
