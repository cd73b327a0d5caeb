"""The DoT client against a real TLS server on loopback: pipelining, ID restoration, reconnect, failover."""

from __future__ import annotations

import asyncio
import ssl
import struct
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from agent_lab import make_certs
from ztdns.agent.config import AgentConfig
from ztdns.agent.upstream import UpstreamError, Upstreams
from ztdns.config import parse_model


async def _serve(certs: Path, answers_per_connection: int) -> tuple[asyncio.Server, int, list[str]]:
    """A DoT server answering A 192.0.2.1 for anything, closing each connection after N answers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    context.load_verify_locations(certs / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED  # the agent must present its client certificate
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        peers.append(dict(x[0] for x in peer["subject"])["commonName"])
        for _ in range(answers_per_connection):
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            query = dns.message.from_wire(await reader.readexactly(size))
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
            wire = response.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1], peers


def _config(certs: Path, *ports: int) -> AgentConfig:
    servers = "".join(f'[[server]]\naddress = "127.0.0.1:{p}"\nhostname = "dns.test"\n' for p in ports)
    tls = f'[tls]\nca_file = "{certs}/ca.pem"\nclient_cert = "{certs}/client.pem"\nclient_key = "{certs}/client.key"\n'
    return parse_model(AgentConfig, "[stub]\ntimeout = 2.0\n" + servers + tls)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder)
    return folder


def test_pipelined_queries_keep_their_ids_and_present_the_client_cert(certs: Path) -> None:
    async def scenario() -> None:
        server, port, peers = await _serve(certs, answers_per_connection=50)
        upstreams = Upstreams(_config(certs, port))
        queries = [dns.message.make_query(f"n{i}.test.", "A") for i in range(20)]
        responses = await asyncio.gather(*(upstreams.query(q.to_wire()) for q in queries))
        for query, wire in zip(queries, responses, strict=True):
            response = dns.message.from_wire(wire)
            assert response.id == query.id and response.question == query.question
        assert peers == ["client"]  # one connection, mTLS
        await upstreams.close()
        server.close()

    asyncio.run(scenario())


def test_server_closing_the_connection_is_not_a_failure(certs: Path) -> None:
    async def scenario() -> None:
        server, port, peers = await _serve(certs, answers_per_connection=1)
        upstreams = Upstreams(_config(certs, port))
        for i in range(3):
            # Each answer is followed by the server closing: the next query opens a fresh connection.
            await upstreams.query(dns.message.make_query(f"n{i}.test.", "A").to_wire())
        assert len(peers) == 3 and upstreams.servers[0].last_error == ""
        await upstreams.close()
        server.close()

    asyncio.run(scenario())


def test_failover_and_all_down(certs: Path, unused_port: int) -> None:
    async def scenario() -> None:
        server, port, _ = await _serve(certs, answers_per_connection=50)
        upstreams = Upstreams(_config(certs, unused_port, port))
        await upstreams.query(dns.message.make_query("a.test.", "A").to_wire())
        assert upstreams.servers[0].last_error and upstreams.servers[0].down_until > 0
        server.close()
        await server.wait_closed()
        await upstreams.close()
        with pytest.raises(UpstreamError):
            await upstreams.query(dns.message.make_query("b.test.", "A").to_wire())

    asyncio.run(scenario())


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
