"""Our sans-IO HTTP/2 server core (ztdns.transport.http2) against the ``h2`` library, per DoH request.

The same client bytes go through both servers: an ``h2`` client (which Huffman-codes the ``:path``, as nghttp2
does) writes batches of 20 DoH requests, GET (``?dns=`` base64url) or POST (``application/dns-message`` body),
on one connection, and each server parses them and answers each with the same 200 response (a 45-byte DNS
answer with content-type, content-length and cache-control), as the DoH engine does for a cache hit. Each GET
carries its own query ID, so its path is new, and the path is never indexed, as with dnsperf (nghttp2 indexes no
``:path``): every GET header block is decoded afresh. No DNS work and no sockets: only HTTP/2 and HPACK. Prints
µs of CPU per request for each and the ratio; for GET also our core answering through its ``inline`` lane (the
answers made at the end of each read, no stream or event), as the DoH engine answers cache hits.
``ZTDNS_NATIVE_HUFFMAN=python`` in the environment measures the Python Huffman decoder instead of the C one.

    python bench/http2.py [--requests 4000]
"""

from __future__ import annotations

import argparse
import base64
import functools
import time
import timeit
from collections.abc import Callable

import dns.message
import h2.config
import h2.connection
import h2.events
from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from ztdns.transport.http2 import H2ServerConnection, Request, huffman
from ztdns.transport.http2.hpack import encode_headers

BATCH = 20
QUERY = dns.message.make_query("www.example.com.", "A").to_wire()
ANSWER = dns.message.make_response(dns.message.from_wire(QUERY)).to_wire().ljust(45, b"\0")
RESPONSE_HEADERS = [
    ("content-type", "application/dns-message"),
    ("content-length", str(len(ANSWER))),
    ("cache-control", "max-age=300"),
]


def get_path(query_id: int) -> str:
    """The path of a GET of QUERY with this ID."""
    return "/dns-query?dns=" + base64.urlsafe_b64encode(query_id.to_bytes(2, "big") + QUERY[2:]).rstrip(b"=").decode()


def client_bytes(method: str, requests: int) -> tuple[bytes, list[bytes]]:
    """The connection preface and SETTINGS, then one chunk of bytes per batch of requests. The client reads
    our core's answers between batches, so its streams close and its windows come back as in a real run."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    client.initiate_connection()
    preface = client.data_to_send()
    server.receive(preface)
    client.receive_data(server.data_to_send())
    acknowledgement = client.data_to_send()  # of the server's SETTINGS
    preface += acknowledgement
    server.receive(acknowledgement)
    client.receive_data(server.data_to_send())
    batches = []
    for _ in range(requests // BATCH):
        for _ in range(BATCH):
            stream_id = client.get_next_available_stream_id()
            headers = [(":method", method), (":scheme", "https"), (":authority", "dns.example")]
            if method == "GET":
                path = NeverIndexedHeaderTuple(":path", get_path(stream_id & 0xFFFF))
                client.send_headers(stream_id, [*headers, path], end_stream=True)
            else:
                headers += [(":path", "/dns-query"), ("content-type", "application/dns-message")]
                client.send_headers(stream_id, [*headers, ("content-length", str(len(QUERY)))])
                client.send_data(stream_id, QUERY, end_stream=True)
        batch = client.data_to_send()
        batches.append(batch)
        for request in server.receive(batch):
            assert isinstance(request, Request)
            server.respond(request.stream_id, 200, RESPONSE_HEADERS, ANSWER)
        for answer in client.receive_data(server.data_to_send()):
            if isinstance(answer, h2.events.DataReceived):
                client.acknowledge_received_data(answer.flow_controlled_length, answer.stream_id)
    return preface, batches


def ours(preface: bytes, batches: list[bytes]) -> int:
    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    server.receive(preface)
    server.data_to_send()
    answered = 0
    for batch in batches:
        for event in server.receive(batch):
            if isinstance(event, Request):
                server.respond(event.stream_id, 200, RESPONSE_HEADERS, ANSWER)
                answered += 1
        server.data_to_send()
    return answered


def ours_inline(preface: bytes, batches: list[bytes]) -> int:
    """Our core answering GETs at the end of each read (its ``inline`` lane, as the DoH engine does)."""
    server = H2ServerConnection(max_streams=100, max_header_bytes=16384, max_body=65535)
    block = encode_headers(200, RESPONSE_HEADERS)
    answered = 0

    def inline(stream_id: int, method: bytes, path: bytes) -> tuple[bytes, bytes] | None:
        nonlocal answered
        answered += 1
        return block, ANSWER

    server.inline = inline
    server.receive(preface)
    server.data_to_send()
    for batch in batches:
        server.receive(batch)
        server.chunks_to_send()
        server.data_to_send()
    return answered


def theirs(preface: bytes, batches: list[bytes]) -> int:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(preface)
    server.data_to_send()
    answered = 0
    for batch in batches:
        for event in server.receive_data(batch):
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                server.send_headers(event.stream_id, [(":status", "200"), *RESPONSE_HEADERS])
                server.send_data(event.stream_id, ANSWER, end_stream=True)
                answered += 1
        server.data_to_send()
    return answered


def per_request(serve: Callable[[bytes, list[bytes]], int], preface: bytes, batches: list[bytes]) -> float:
    """µs of CPU per request, best of three runs."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        answered = serve(preface, batches)
        best = min(best, time.process_time() - started)
    assert answered == len(batches) * BATCH, answered
    return best / answered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    ours(*client_bytes("GET", BATCH))  # warm up: Huffman tables are built on first use
    print(f"{'request':8} {'ztdns µs':>9} {'h2 µs':>9} {'h2/ztdns':>9}")
    for method in ("GET", "POST"):
        preface, batches = client_bytes(method, args.requests)
        mine, library = per_request(ours, preface, batches), per_request(theirs, preface, batches)
        print(f"{method:8} {mine:9.1f} {library:9.1f} {library / mine:9.1f}")
        if method == "GET":
            mine = per_request(ours_inline, preface, batches)
            print(f"{'  inline':8} {mine:9.1f} {library:9.1f} {library / mine:9.1f}")
    huffman_decoding()


def huffman_decoding() -> None:
    """The Huffman decoding of one GET path: the C extension's against the Python decoder's (best of five)."""
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(get_path(0x1234).encode())
    print(f"Huffman-decoding a GET path ({len(encoded)} bytes), µs:", end="")
    decoders = [("python", huffman.huffman_decode_python)]
    if huffman.NATIVE:
        decoders.append(("C", huffman.huffman_decode))
    for name, decode in decoders:
        assert decode(encoded) == get_path(0x1234).encode()
        best = min(timeit.repeat(functools.partial(decode, encoded), number=20000, repeat=5)) / 20000
        print(f"  {name} {best * 1e6:.2f}", end="")
    print("" if huffman.NATIVE else "  (C extension not built)")


if __name__ == "__main__":
    main()
