"""DoH's HTTP-level bounds against hostile clients on a real listener (issue 12): requests trickled a byte at a
time (HTTP/1.1 and HTTP/2), a client advertising a zero window, and unfinished POST bodies held open across
connections. Each attacker is cut within its bound while an honest client on the same listener is answered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.message
import hpack
import pytest

from fixtures.http2 import DATA, END_HEADERS, END_STREAM, HEADERS, PING, SETTINGS, WINDOW_UPDATE, Client, connect, raw
from fixtures.tls import EchoHandler, Pki, listen_config
from ztdns.transport.doh import body_budget, start_doh_listener
from ztdns.transport.http2 import ConnectionEnded, ErrorCode, H2ServerConnection, huffman
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tls import TlsMaterial

QUERY = dns.message.make_query("host.fast.", "A").to_wire()
FAST_GET = [
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=").decode()),
    (":authority", "dns.test"),
]
POST = [
    (":method", "POST"),
    (":scheme", "https"),
    (":path", "/dns-query"),
    (":authority", "dns.test"),
    ("content-type", "application/dns-message"),
]


async def start(pki: Pki, **limits: Any) -> TlsStreamListener:
    config = listen_config(pki, "doh", **limits)
    return await start_doh_listener(config, EchoHandler(), TlsMaterial.from_config(config))


async def honest_answer(pki: Pki, port: int) -> None:
    client = await connect(pki, port)
    await client.handshake()
    client.send(client.headers(1, FAST_GET))
    await client.until_stream_closed(1)
    client.writer.close()


async def closed_within(client: Client, seconds: float) -> float | None:
    """Read (and drop) frames until the server closes the connection: how long that took, or None."""
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        try:
            if await client.frame(timeout=left) is None:
                return time.monotonic() - started
        except TimeoutError:
            return None
    return None


def cut_within_bound(pki: Pki, attack: Callable[[int], Awaitable[float | None]]) -> None:
    """Run ATTACK (given the port; it returns the seconds until the server cut it, or None) against a listener
    with idle_timeout 30 s and query_timeout 1 s: the cut must come after about query_timeout, not idle_timeout,
    and an honest client must still be answered."""

    async def body() -> None:
        listener = await start(pki, idle_timeout=30, query_timeout=1)
        try:
            cut = await attack(listener.address[1])
            assert cut is not None and cut < 4, cut
            await honest_answer(pki, listener.address[1])
        finally:
            await listener.close()

    asyncio.run(body())


def test_http1_request_trickled_a_byte_at_a_time_is_cut(pki: Pki) -> None:
    """Slowloris: one byte every 0.3 s is never silence, but no request is whole within query_timeout."""

    async def attack(port: int) -> float | None:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="dns.test")
        request = b"POST /dns-query HTTP/1.1\r\nhost: dns.test\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
        started = time.monotonic()
        for byte in request:
            writer.write(bytes((byte,)))
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    return time.monotonic() - started
            if time.monotonic() - started > 6:
                break
        return None

    cut_within_bound(pki, attack)


def test_http2_request_trickled_with_pings_is_cut(pki: Pki) -> None:
    """The same over HTTP/2: a stream opened, its body sent a byte at a time, PINGs in between."""

    async def attack(port: int) -> float | None:
        client = await connect(pki, port)
        await client.handshake()
        client.send(client.headers(1, POST, END_HEADERS))
        started = time.monotonic()
        while time.monotonic() - started < 6:
            try:
                client.send(raw(DATA, 0, 1, b"x"), raw(PING, 0, 0, b"12345678"))
            except ConnectionError:
                break
            if await closed_within(client, 0.3) is not None:
                return time.monotonic() - started
        return None

    cut_within_bound(pki, attack)


def test_http2_zero_window_client_is_cut(pki: Pki) -> None:
    """A client advertising a zero window never takes its answer: before, the answer waiting for window kept
    the connection "busy", so no timeout ever closed it."""

    async def attack(port: int) -> float | None:
        client = await connect(pki, port)
        await client.handshake(struct.pack(">HI", 4, 0))  # SETTINGS_INITIAL_WINDOW_SIZE = 0
        client.send(client.headers(1, FAST_GET))
        return await closed_within(client, 6)

    cut_within_bound(pki, attack)


def test_unfinished_bodies_are_bounded_over_the_listener(pki: Pki) -> None:
    """Clients open POST streams and send most of each body, never the end: what they make the listener hold
    stays under max_pending_body_bytes, the biggest holders cut first; others are still answered."""

    async def body() -> None:
        limit = 256 * 1024
        listener = await start(pki, idle_timeout=30, query_timeout=30, max_pending_body_bytes=limit)
        port = listener.address[1]
        try:
            attackers = []
            for _ in range(6):
                client = await connect(pki, port)
                await client.handshake()
                for stream_id in range(1, 8, 2):  # 4 streams of 60,000 bytes: 240,000 per connection
                    client.send(client.headers(stream_id, [*POST, ("content-length", "65000")], END_HEADERS))
                    client.send(*(raw(DATA, 0, stream_id, b"x" * 15000) for _ in range(4)))
                attackers.append(client)
                await asyncio.sleep(0.1)
            budget = body_budget(listener)
            assert budget.total <= limit, budget.total
            assert budget.cut >= 5, budget.cut  # each held 240,000 bytes: one fits under the limit
            await honest_answer(pki, port)
        finally:
            await listener.close()

    asyncio.run(body())


def test_a_connection_holds_at_most_its_receive_window_of_bodies() -> None:
    """Per connection, unfinished bodies are bounded by the connection window: it is given back only as
    requests complete, so a client that keeps bodies open runs out of window instead of filling memory."""
    encoder = hpack.Encoder()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw(SETTINGS, 0, 0)

    def post(stream_id: int, flags: int) -> bytes:  # uses the current encoder
        return raw(HEADERS, END_HEADERS, stream_id, encoder.encode(POST)) + raw(DATA, flags, stream_id, b"x" * 16000)

    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    held = b"".join(post(stream_id, 0) for stream_id in range(1, 130, 2))  # 65 bodies, none finished
    assert server.receive(preface + held) == []
    assert server.body_bytes == 65 * 16000
    updates = [f for f in _frames(server.data_to_send()) if f[0] == WINDOW_UPDATE and f[2] == 0]
    assert sum(struct.unpack(">I", f[3])[0] for f in updates) == (1 << 20) - 65535  # the initial raise only
    assert server.receive(post(131, 0)) == [ConnectionEnded(ErrorCode.FLOW_CONTROL_ERROR)]  # past the window

    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    encoder = hpack.Encoder()  # a new connection: a new HPACK table
    finished = b"".join(post(stream_id, END_STREAM) for stream_id in range(1, 130, 2))
    assert len(server.receive(preface + finished)) == 65 and server.body_bytes == 0
    updates = [f for f in _frames(server.data_to_send()) if f[0] == WINDOW_UPDATE and f[2] == 0]
    assert len(updates) == 2  # the initial raise, and half the window given back as requests completed


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        stream_id = int.from_bytes(data[offset + 5 : offset + 9], "big")
        frames.append((kind, flags, stream_id, data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return frames


def test_a_post_whose_body_waits_for_the_headers_ack_is_not_delayed(pki: Pki) -> None:
    """A client with Nagle's algorithm on sends a POST's DATA only once its HEADERS are acknowledged, and Linux
    delays a bare ACK by up to 40 ms: the server acknowledges a read it has no answer for yet at once (dnsperf's
    DoH with one connection did 1,425 q/s at 44 ms per request before)."""
    import socket

    async def body() -> None:
        listener = await start(pki)
        try:
            medians = {}
            for nagle in (False, True):
                client = await connect(pki, listener.address[1])
                sock = client.writer.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(not nagle))
                await client.handshake()
                times = []
                for stream in range(1, 40, 2):
                    started = time.perf_counter()
                    client.send(client.headers(stream, [*POST, ("content-length", str(len(QUERY)))], END_HEADERS))
                    await client.writer.drain()
                    await asyncio.sleep(0)
                    client.send(raw(DATA, END_STREAM, stream, QUERY))
                    await client.until_stream_closed(stream)
                    times.append(time.perf_counter() - started)
                client.writer.close()
                medians[nagle] = statistics.median(times)
            # The delayed ACK adds ~40 ms to every request; the same requests without Nagle are the yardstick, so
            # a loaded machine slows both alike.
            assert medians[True] < medians[False] + 0.02, medians
        finally:
            await listener.close()

    asyncio.run(body())


def test_a_listener_builds_the_huffman_tables_before_its_first_request(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Built on first use they cost the first GET 60-150 ms.
    monkeypatch.setattr(huffman, "_native_loaded", False)
    monkeypatch.setattr(huffman, "_NEXT", [])
    monkeypatch.setattr(huffman, "_OUT", [])

    async def body() -> None:
        listener = await start(pki)
        try:
            assert huffman._native_loaded if huffman.NATIVE else huffman._NEXT
        finally:
            await listener.close()

    asyncio.run(body())
