"""The memory-BIO TLS layer hands the connection protocol the records of one read together (an HTTP/2 POST's
HEADERS and DATA records run its HTTP engine once, not twice), and sends what it answers in one write; DoT seals
the answers to one read in one record."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from fixtures.tls import Pki
from ztdns.client import ClientInfo
from ztdns.config.listen import ListenConfig
from ztdns.transport.dot import DotConnection
from ztdns.transport.framing import frame
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tls import TlsMaterial
from ztdns.transport.tlsbio import _READ_SIZE, TlsBioProtocol


class Wire(asyncio.Transport):
    """The TCP transport under the TLS layer: keeps what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App(asyncio.Protocol):
    """The connection protocol: records each delivery and answers each with two writes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.transport.write(b"answer one")
        self.transport.write(b"answer two")


async def connected(
    pki: Pki, app: asyncio.Protocol | None = None
) -> tuple[Any, Wire, TlsBioProtocol, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A server TLS layer (for APP, by default an :class:`App`) and a client over memory BIOs, handshake done: app,
    wire, server, client and the client's incoming and outgoing BIOs."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.cert("server"), pki.key("server"))
    app, wire = app or App(), Wire()
    server = TlsBioProtocol(server_context, app, 5.0)
    server.connection_made(wire)
    client_context = ssl.create_default_context(cafile=str(pki.ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(incoming, outgoing, server_hostname="dns.test")
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            server.data_received(outgoing.read())
            for data in wire.sent:
                incoming.write(data)
            wire.sent.clear()
    server.data_received(outgoing.read())  # the client's Finished
    await server.handshake
    for data in wire.sent:  # session tickets
        incoming.write(data)
    wire.sent.clear()
    return app, wire, server, client, incoming, outgoing


def test_records_of_one_read_are_delivered_together_and_answered_in_one_send(pki: Pki) -> None:
    async def body() -> None:
        app, wire, server, client, incoming, outgoing = await connected(pki)
        client.write(b"HEADERS")
        client.write(b"DATA")  # a record of its own
        server.data_received(outgoing.read())
        assert app.received == [b"HEADERSDATA"]
        assert len(wire.sent) == 1  # both answers, each its own record, in one send
        for data in wire.sent:
            incoming.write(data)
        assert client.read(100) + client.read(100) == b"answer oneanswer two"
        # More than a delivery's worth in one read: given in pieces of at most _READ_SIZE, nothing lost.
        app.received.clear()
        for _ in range(6):
            client.write(bytes(16384))
        server.data_received(outgoing.read())
        assert len(app.received) == 2 and sum(map(len, app.received)) == 6 * 16384
        assert all(len(data) <= _READ_SIZE for data in app.received)

    asyncio.run(body())


def test_a_record_split_over_reads_and_the_close_notify_are_taken(pki: Pki) -> None:
    """Reading stops when no bytes are left to decrypt (no SSLWantReadError raised and caught per read): a record
    whose rest comes in a later read is delivered then, and the client's close_notify still closes."""

    async def body() -> None:
        app, wire, server, client, _incoming, outgoing = await connected(pki)
        client.write(b"whole")
        client.write(b"split")
        data = outgoing.read()
        server.data_received(data[:-5])
        assert app.received == [b"whole"]
        server.data_received(data[-5:])
        assert app.received == [b"whole", b"split"]
        with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's close_notify
            client.unwrap()
        server.data_received(outgoing.read())
        assert wire.closed

    asyncio.run(body())


class Answers:
    """A handler: its fast path answers queries whose ID is even, its full path the others."""

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return None if wire[1] & 1 else wire + b"fast"

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        await asyncio.sleep(0)
        return wire + b"slow"


def test_dot_answers_of_one_read_share_one_tls_record(pki: Pki) -> None:
    """DoT seals the fast-path answers to a read's queries in one TLS record (a record costs about as much to seal
    as the rest of a cached answer's transport work); answers from the full path follow on their own, and the
    client's byte stream is what answering one by one gives."""

    async def body() -> None:
        config = ListenConfig(
            transport="dot", address="127.0.0.1:0", cert=str(pki.cert("server")), key=str(pki.key("server"))
        )
        listener = TlsStreamListener(config, Answers(), TlsMaterial.from_config(config), DotConnection)
        connection = DotConnection(listener)
        _, wire, server, client, incoming, outgoing = await connected(pki, connection)
        queries = [bytes([0, query_id]) + b"query" for query_id in (2, 3, 4, 6)]
        for query in queries:
            client.write(frame(query))  # each its own record, all in one read
        server.data_received(outgoing.read())
        assert len(wire.sent) == 1
        incoming.write(wire.sent.pop())
        fast = [frame(query + b"fast") for query in queries if not query[1] & 1]
        assert client.read(65536) == b"".join(fast)  # one record: one read returns them all
        await asyncio.gather(*connection.tasks)
        assert len(wire.sent) == 1
        incoming.write(wire.sent.pop())
        assert client.read(65536) == frame(queries[1] + b"slow")

    asyncio.run(body())
