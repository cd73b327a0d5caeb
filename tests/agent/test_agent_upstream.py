"""The agent's upstream clients against real TLS servers on loopback: pipelining, ID restoration, reconnect,
failover across DoT and DoH, the client certificate verified by ztdns's own listeners."""

from __future__ import annotations

import asyncio
import ssl
import struct
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from agent_lab import make_certs
from fixtures.tls import PROD_ID, EchoHandler, Pki, listen_config, pki
from fixtures.unbound import free_port
from ztdns.agent.upstream import UpstreamError, Upstreams, client_for
from ztdns.config import ConfigError, parse_model
from ztdns.config.agent import AgentConfig
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial

__all__ = ["pki"]


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
    return free_port()


def test_doh_and_dot_servers_mixed_with_failover_and_verified_identity(pki: Pki, unused_port: int) -> None:
    """ztdns's own DoT and DoH listeners requiring a client certificate: the agent's client presents it (the
    listener sees the SPIFFE ID), and failover crosses transports in configured order."""

    async def scenario() -> None:
        handler = EchoHandler()
        dot_config, doh_config = (listen_config(pki, kind, client_auth="require") for kind in ("dot", "doh"))
        dot = await start_dot_listener(dot_config, handler, TlsMaterial.from_config(dot_config))
        doh = await start_doh_listener(doh_config, handler, TlsMaterial.from_config(doh_config))
        servers = (
            f'[[server]]\naddress = "127.0.0.1:{unused_port}"\nhostname = "dns.test"\ntransport = "doh"\n'
            f'[[server]]\naddress = "127.0.0.1:{doh.address[1]}"\nhostname = "dns.test"\ntransport = "doh"\n'
            f'[[server]]\naddress = "127.0.0.1:{dot.address[1]}"\nhostname = "dns.test"\n'
        )
        tls = f'[tls]\nca_file = "{pki.ca}"\nclient_cert = "{pki.cert("prod")}"\nclient_key = "{pki.key("prod")}"\n'
        # A long budget: each server gets a share of it, and a mutual-TLS handshake on a loaded machine can take
        # over a second (the share of a 2 s budget): the query then went on to the DoT server.
        upstreams = Upstreams(parse_model(AgentConfig, "[stub]\ntimeout = 10.0\n" + servers + tls))
        try:
            query = dns.message.make_query("whoami.", "TXT")
            answers = await asyncio.gather(*(upstreams.query(query.to_wire()) for _ in range(5)))
            for wire in answers:
                response = dns.message.from_wire(wire)
                assert response.id == query.id and response.answer[0].to_text().endswith(f'"doh" "{PROD_ID}"')
            dead, over_doh, over_dot = upstreams.servers
            assert dead.last_error and dead.down_until > 0 and not over_doh.last_error
            await doh.close()
            # The DoH server is gone: the DoT one answers, the same identity verified on that transport.
            response = dns.message.from_wire(await upstreams.query(query.to_wire()))
            assert response.answer[0].to_text().endswith(f'"dot" "{PROD_ID}"')
            assert over_doh.last_error and not over_dot.last_error
            assert {client.certificate_identity for client in handler.clients} == {PROD_ID}
        finally:
            await upstreams.close()
            await dot.close()

    asyncio.run(scenario())


def test_server_addresses_must_be_ip_addresses_and_doh_paths_urls() -> None:
    with pytest.raises(ConfigError, match="does not appear to be an IPv4 or IPv6 address"):
        parse_model(AgentConfig, '[[server]]\naddress = "dns.example:853"\nhostname = "dns.example"\n')
    with pytest.raises(ConfigError, match="is not a URL path"):
        parse_model(AgentConfig, '[[server]]\naddress = "192.0.2.1"\nhostname = "d"\ntransport = "doh"\npath = "x"\n')
    doh = parse_model(AgentConfig, '[[server]]\naddress = "2001:db8::1"\nhostname = "d"\ntransport = "doh"\n')
    assert doh.server[0].hostport() == ("2001:db8::1", 443)
    assert client_for(doh, doh.server[0]).host == "2001:db8::1"
