"""The encrypted transports' own cost per query, in-process, no sockets: DoT and DoH (GET, POST) requests
through the whole server path (TLS records decrypted from a memory BIO in ``transport/tlsbio.py``, DoT framing
or our HTTP/2 core, the DoH request rules, answers encrypted) with a handler answering from pre-rendered
responses in its fast path, as ``bench/encrypted.py --target handler`` does over real sockets.

The load shape that matters is how many requests one read carries: with dnsperf ``-c 16 -q 64`` each
connection's read holds one to three, with ``-q 1024`` dozens. Each case feeds reads of K requests (each request
its own TLS record, as dnsperf writes them) and prints µs of CPU per request, the best of ``--repeats`` runs;
compare two checkouts by running this file with each one's ``src`` on ``PYTHONPATH``, alternating.

    .venv/bin/python bench/encrypted_path.py [--requests 20000] [--per-read 1,2,4,64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import hpack
import uvloop
from hpack import NeverIndexedHeaderTuple

from encrypted import NAMES, PrerenderedHandler
from ztdns.config.listen import ListenConfig
from ztdns.pki import init_ca, issue
from ztdns.transport.doh import DohConnection, DohListener
from ztdns.transport.dot import DotConnection
from ztdns.transport.framing import frame
from ztdns.transport.http2 import huffman
from ztdns.transport.http2.frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    SETTINGS,
    WINDOW_UPDATE,
)
from ztdns.transport.http2.frames import frame as h2_frame
from ztdns.transport.stream import TlsConnection, TlsStreamListener
from ztdns.transport.tls import TlsMaterial
from ztdns.transport.tlsbio import TlsBioProtocol

QUERIES = [dns.message.make_query(name, "A", use_edns=False).to_wire() for name in NAMES]


class Wire:
    """The TCP transport under TLS: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.sends = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.sends += 1
        self.sent += len(data)
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def dot_requests(count: int) -> list[bytes]:
    return [frame(QUERIES[i % len(QUERIES)]) for i in range(count)]


def doh_requests(method: str, count: int) -> list[bytes]:
    """dnsperf's requests as HTTP/2 bytes (its header blocks: the path a never-indexed, Huffman-coded literal),
    after the preface and SETTINGS; a connection WINDOW_UPDATE now and then for the answers."""
    encoder = hpack.Encoder()
    out = [PREFACE + h2_frame(SETTINGS, 0, 0, b"") + h2_frame(SETTINGS, 1, 0, b"")]
    for i in range(count):
        stream_id = 2 * i + 1
        wire = (i & 0xFFFF).to_bytes(2, "big") + QUERIES[i % len(QUERIES)][2:]
        headers: list[Any] = [(":method", method), (":scheme", "https"), (":authority", "127.0.0.1")]
        if method == "GET":
            path = "/dns-query?dns=" + base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
            block = encoder.encode([*headers, NeverIndexedHeaderTuple(":path", path)])
            request = h2_frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        else:
            headers += [(":path", "/dns-query"), ("content-type", "application/dns-message")]
            block = encoder.encode([*headers, ("content-length", str(len(wire)))])
            request = h2_frame(HEADERS, END_HEADERS, stream_id, block) + h2_frame(DATA, END_STREAM, stream_id, wire)
        if i % 256 == 255:
            request += h2_frame(WINDOW_UPDATE, 0, 0, (256 * 200).to_bytes(4, "big"))
        out.append(request)
    return out


def run(
    listener: TlsStreamListener,
    make: Callable[[TlsStreamListener], TlsConnection],
    client_context: ssl.SSLContext,
    requests: list[bytes],
    per_read: int,
) -> float:
    """µs of CPU per request for reads of PER_READ requests."""
    connection = make(listener)
    tls = TlsBioProtocol(listener.material.current.context, connection, 5.0)
    wire = Wire()
    tls.connection_made(wire)  # type: ignore[arg-type]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        tls.data_received(outgoing.read())
        incoming.write(wire.last)
    tls.data_received(outgoing.read())  # the client's Finished
    first, rest = requests[0], requests[1:]
    if first[:3] == PREFACE[:3]:  # DoH: the preface and SETTINGS, untimed
        client.write(first)
        tls.data_received(outgoing.read())
    else:
        rest = requests
    reads = []
    for start in range(0, len(rest), per_read):
        for request in rest[start : start + per_read]:
            client.write(request)  # each its own TLS record
        reads.append(outgoing.read())
    received = tls.data_received
    started = time.process_time()
    for data in reads:
        received(data)
    elapsed = time.process_time() - started
    assert wire.sends >= len(reads), "a read went unanswered"
    tls.connection_lost(None)
    return elapsed / len(rest) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--per-read", default="1,2,4,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transports", default="dot,doh-get,doh-post")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        init_ca(directory)
        issue(directory, "server", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        client_context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        huffman.prepare()  # as start_doh_listener does, before the first request
        handler = PrerenderedHandler()
        sizes = [int(size) for size in args.per_read.split(",")]
        print(f"{'transport':10}" + "".join(f"{f'{size}/read µs':>14}" for size in sizes))
        for transport in args.transports.split(","):
            kind = "dot" if transport == "dot" else "doh"
            config = ListenConfig(
                transport=kind,
                address="127.0.0.1:0",
                cert=str(directory / "server.crt"),
                key=str(directory / "server.key"),
                max_pipelined=65535,
            )
            material = TlsMaterial.from_config(config)
            if kind == "dot":
                listener: TlsStreamListener = TlsStreamListener(config, handler, material, DotConnection)
                make: Callable[[TlsStreamListener], TlsConnection] = DotConnection
                requests = dot_requests(args.requests)
                client_context.set_alpn_protocols(["dot"])
            else:
                listener = DohListener(config, handler, material, DohConnection)
                make = DohConnection
                requests = doh_requests("GET" if transport == "doh-get" else "POST", args.requests)
                client_context.set_alpn_protocols(["h2"])
            cells = []
            for size in sizes:
                runs = [run(listener, make, client_context, requests, size) for _ in range(args.repeats)]
                cells.append(f"{min(runs):14.2f}")  # the best: other work only ever adds to it
            print(f"{transport:10}" + "".join(cells))


if __name__ == "__main__":
    uvloop.run(main())  # the server's event loop
