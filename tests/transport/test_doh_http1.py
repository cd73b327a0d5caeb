"""DoH over HTTP/1.1 (h11): malformed requests get their 4xx and never crash the connection, on the real
listener and under fuzzing of the engine."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Coroutine

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.tls import EchoHandler, Pki, listen_config
from ztdns.client import ClientInfo, Transport
from ztdns.transport.doh import DohConnection, Http1Engine, start_doh_listener
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tls import TlsMaterial

QUERY = dns.message.make_query("host.fast.", "A").to_wire()
POST_HEAD = b"POST /dns-query HTTP/1.1\r\nhost: dns.test\r\ncontent-type: application/dns-message\r\n"


async def start(pki: Pki) -> TlsStreamListener:
    config = listen_config(pki, "doh")
    return await start_doh_listener(config, EchoHandler(), TlsMaterial.from_config(config))


async def open_http1(pki: Pki, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["http/1.1"])
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="dns.test")


MALFORMED = {
    # The hand parser took "²" for a digit (str.isdigit) and crashed in int().
    "superscript digit": (POST_HEAD + "content-length: ²\r\n\r\n".encode(), b"400"),
    "arabic-indic digit": (POST_HEAD + "content-length: ٣\r\n\r\n".encode(), b"400"),
    "negative length": (POST_HEAD + b"content-length: -1\r\n\r\n", b"400"),
    "two lengths": (POST_HEAD + b"content-length: 1\r\ncontent-length: 2\r\n\r\nx", b"400"),
    "space before colon": (b"GET /dns-query HTTP/1.1\r\nhost : dns.test\r\n\r\n", b"400"),
    "no colon": (b"GET /dns-query HTTP/1.1\r\nhost\r\n\r\n", b"400"),
    "bad request line": (b"GET /dns-query\r\nhost: dns.test\r\n\r\n", b"400"),
    "no host": (b"GET /dns-query HTTP/1.1\r\n\r\n", b"400"),
    "control character in value": (b"GET /dns-query HTTP/1.1\r\nhost: a\x00b\r\n\r\n", b"400"),
    "huge header": (b"GET /dns-query HTTP/1.1\r\nhost: dns.test\r\nx: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    "huge body": (POST_HEAD + b"content-length: 70000\r\n\r\n", b"413"),
}


def test_malformed_requests_get_4xx_and_the_listener_goes_on(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        listener = await start(pki)
        port = listener.address[1]
        try:
            for name, (request, status) in MALFORMED.items():
                reader, writer = await open_http1(pki, port)
                writer.write(request)
                response = await asyncio.wait_for(reader.read(), 3)  # then the server closes
                assert response.startswith(b"HTTP/1.1 " + status), (name, response)
                assert b"connection: close" in response.lower(), (name, response)
                writer.close()
            reader, writer = await open_http1(pki, port)
            writer.write(POST_HEAD + f"content-length: {len(QUERY)}\r\n\r\n".encode() + QUERY)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            writer.close()
        finally:
            await listener.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text


class _PrerenderedHandler:
    answer = dns.message.make_response(dns.message.from_wire(QUERY)).to_wire()

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return wire[:2] + self.answer[2:] if b"\x04fast\x00" in wire else None

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return None


class FakeConnection:
    """What Http1Engine needs of a DohConnection, recording what it writes."""

    def __init__(self) -> None:
        self.config = type("Config", (), {"path": "/dns-query"})()
        self.handler = _PrerenderedHandler()
        self.client = ClientInfo(Transport.DOH, "127.0.0.1", 1, None, stream=True)
        self.draining = False
        self.closed = False
        self.written = bytearray()
        self.routes: dict[str, object] = {}  # no other GET paths (answer_now looks them up for a 404)
        self.answer_now = DohConnection.answer_now.__get__(self)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        coroutine.close()  # the slow path is not this test's business: the engine stays busy

    def close(self) -> None:
        self.closed = True

    def touch(self) -> None:
        pass

    def clock(self) -> float:
        return time.monotonic()

    def pause_reading_for_writes(self) -> None:
        pass

    def resume_reading_if_possible(self) -> None:
        pass


def engine() -> tuple[Http1Engine, FakeConnection]:
    connection = FakeConnection()
    return Http1Engine(connection), connection  # type: ignore[arg-type]


def test_pipelined_requests_are_answered_in_order() -> None:
    http, connection = engine()
    post = POST_HEAD + f"content-length: {len(QUERY)}\r\n\r\n".encode() + QUERY
    http.received(post + b"PUT /dns-query HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n" + post[:30])
    assert connection.written.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert connection.written.index(b"200 OK") < connection.written.index(b"405 Method Not Allowed")
    http.received(post[30:])
    assert connection.written.count(b"HTTP/1.1 200 OK\r\n") == 2 and not connection.closed


request_pieces = st.sampled_from(
    [
        b"GET /dns-query?dns=AAABAAABAAAAAAAABGhvc3QEZmFzdAAAAQAB HTTP/1.1\r\n",
        b"POST /dns-query HTTP/1.1\r\n",
        b"HEAD /dns-query HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"host: dns.test\r\n",
        b"content-type: application/dns-message\r\n",
        b"content-length: 33\r\n",
        "content-length: ²\r\n".encode(),
        b"transfer-encoding: chunked\r\n",
        b"expect: 100-continue\r\n",
        b"connection: close\r\n",
        b"21\r\n",
        b"0\r\n",
        b"\r\n",
        QUERY,
        b"\x00\xff:",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(request_pieces | st.binary(max_size=20), max_size=20), st.integers(1, 64))
def test_any_bytes_end_in_responses_never_exceptions(pieces: list[bytes], chunk: int) -> None:
    http, connection = engine()
    data = b"".join(pieces)
    for offset in range(0, len(data), chunk):
        if connection.closed:
            break
        http.received(data[offset : offset + chunk])
    written = bytes(connection.written)
    assert not written or written.startswith(b"HTTP/1.1 ")


def test_head_then_get_on_one_connection_is_not_shifted(pki: Pki) -> None:
    """A HEAD answer has no body (RFC 9110 section 9.3.2): when it had one, the next response on a persistent
    connection started inside it."""

    async def body() -> None:
        listener = await start(pki)
        try:
            reader, writer = await open_http1(pki, listener.address[1])
            encoded = base64.urlsafe_b64encode(QUERY).rstrip(b"=")
            get = b"GET /dns-query?dns=" + encoded + b" HTTP/1.1\r\nhost: dns.test\r\n\r\n"
            writer.write(b"HEAD /dns-query HTTP/1.1\r\nhost: dns.test\r\n\r\n" + get)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 405 "), head
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert second.startswith(b"HTTP/1.1 200 OK\r\n"), second
            length = int(second.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = dns.message.from_wire(await asyncio.wait_for(reader.readexactly(length), 3))
            assert answer.answer
            writer.close()
        finally:
            await listener.close()

    asyncio.run(body())
