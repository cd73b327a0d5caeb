from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from fixtures.tls import DEV_ID, PROD_ID, EchoHandler, Pki, listen_config
from ztdns.pki.pin import spki_pin
from ztdns.resolver.encrypted import (
    DohUpstream,
    DoqUpstream,
    DotUpstream,
    TlsClientSettings,
    UpstreamError,
)
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.doq import start_doq_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial


def txt(wire: bytes) -> str:
    return dns.message.from_wire(wire).answer[0].to_text()


def test_doq_identities_and_refusals(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        config = listen_config(pki, "doq", client_auth="optional")
        handler = EchoHandler()
        listener = await start_doq_listener(config, handler, TlsMaterial.from_config(config))
        port = listener.address[1]
        query = dns.message.make_query("whoami.", "TXT")

        def settings(name: str | None) -> TlsClientSettings:
            if name is None:
                return TlsClientSettings(server_name="dns.test", ca=pki.ca)
            return TlsClientSettings(server_name="dns.test", ca=pki.ca, cert=pki.cert(name), key=pki.key(name))

        try:
            for name, expected in (("prod", PROD_ID), ("dev", DEV_ID), (None, '"-"')):
                upstream = DoqUpstream("127.0.0.1", port, settings(name))
                answers = await asyncio.gather(*(upstream.query(query.to_wire(), 3) for _ in range(5)))
                assert all(expected in txt(a) for a in answers)
                assert all(dns.message.from_wire(a).id == query.id for a in answers)
                await upstream.close()
            for bad in ("expired", "revoked", "stranger"):
                upstream = DoqUpstream("127.0.0.1", port, settings(bad))
                with pytest.raises((UpstreamError, TimeoutError, ConnectionError)):
                    await upstream.query(query.to_wire(), 2)
                await upstream.close()
            # dnspython's own DoQ client (no client certificate: optional mode answers it).
            response = await dns.asyncquery.quic(
                query, "127.0.0.1", port=port, timeout=3, verify=str(pki.ca), server_hostname="dns.test"
            )
            assert '"doq" "-"' in response.answer[0].to_text()
        finally:
            await listener.close()
        assert listener.refusals.total == 3

    with caplog.at_level("WARNING"):
        asyncio.run(body())
    assert "certificate has expired" in caplog.text
    assert "certificate revoked" in caplog.text


def test_doq_rejects_nonzero_message_id(pki: Pki) -> None:
    async def body() -> None:
        config = listen_config(pki, "doq")
        listener = await start_doq_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        upstream = DoqUpstream("127.0.0.1", listener.address[1], TlsClientSettings("dns.test", pki.ca))
        try:
            protocol = await upstream._connection()
            with pytest.raises(UpstreamError, match="message ID"):
                await asyncio.wait_for(protocol.ask(dns.message.make_query("x.", "A").to_wire()), 3)
            # The upstream client reconnects on the next query.
            answer = await upstream.query(dns.message.make_query("x.", "A").to_wire(), 3)
            assert dns.message.from_wire(answer).rcode() == dns.rcode.NOERROR
        finally:
            await upstream.close()
            await listener.close()

    asyncio.run(body())


def test_encrypted_upstreams_reuse_verify_and_pin(pki: Pki) -> None:
    async def body() -> None:
        handler = EchoHandler(delay=0.2)
        dot_config = listen_config(pki, "dot", client_auth="require")
        doh_config = listen_config(pki, "doh", client_auth="require")
        dot = await start_dot_listener(dot_config, handler, TlsMaterial.from_config(dot_config))
        doh = await start_doh_listener(doh_config, handler, TlsMaterial.from_config(doh_config))
        good = TlsClientSettings("dns.test", pki.ca, cert=pki.cert("prod"), key=pki.key("prod"))
        pin = spki_pin(dns_cert_der(pki))
        try:
            upstreams: list[DotUpstream | DohUpstream] = [
                DotUpstream("127.0.0.1", dot.address[1], good),
                DohUpstream(
                    f"https://127.0.0.1:{doh.address[1]}/dns-query",
                    TlsClientSettings("dns.test", pki.ca, pin, pki.cert("prod"), pki.key("prod")),
                ),
            ]
            for upstream in upstreams:
                # Same message ID in flight concurrently, slow and fast: all answered, IDs restored.
                queries = [dns.message.make_query(n, "TXT") for n in ("whoami.slow.", "whoami.", "whoami.fast.")]
                for q in queries:
                    q.id = 4242
                answers = await asyncio.gather(*(upstream.query(q.to_wire(), 3) for q in queries))
                for q, a in zip(queries, answers, strict=True):
                    parsed = dns.message.from_wire(a)
                    assert parsed.id == 4242 and parsed.question[0].name == q.question[0].name
                    assert PROD_ID in parsed.answer[0].to_text()
                await upstream.close()
            assert len({c.port for c in handler.clients}) == 2  # one connection per upstream, reused

            wrong_name = DotUpstream(
                "127.0.0.1",
                dot.address[1],
                TlsClientSettings("other.test", pki.ca, cert=pki.cert("prod"), key=pki.key("prod")),
            )
            with pytest.raises(UpstreamError):
                await wrong_name.query(dns.message.make_query("x.", "A").to_wire(), 2)
            wrong_pin = DotUpstream(
                "127.0.0.1",
                dot.address[1],
                TlsClientSettings("dns.test", pki.ca, "AAAA" + pin[4:], pki.cert("prod"), pki.key("prod")),
            )
            with pytest.raises(UpstreamError, match="pin"):
                await wrong_pin.query(dns.message.make_query("x.", "A").to_wire(), 2)
        finally:
            await dot.close()
            await doh.close()

    asyncio.run(body())


def dns_cert_der(pki: Pki) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pki.cert("server").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_fresh_client_authenticated_connections_on_uvloop_all_complete(pki: Pki) -> None:
    """ztdns serves on uvloop: every new mTLS connection must be answered (a ClientHello read before the
    handshake took over the socket used to be lost, leaving most new connections hanging)."""
    import uvloop

    async def body() -> None:
        handler = EchoHandler()
        for transport in ("dot", "doh"):
            config = listen_config(pki, transport, client_auth="require")
            start = start_dot_listener if transport == "dot" else start_doh_listener
            listener = await start(config, handler, TlsMaterial.from_config(config))
            port = listener.address[1]
            settings = TlsClientSettings(server_name="dns.test", ca=pki.ca, cert=pki.cert("prod"), key=pki.key("prod"))
            try:
                for _ in range(15):
                    upstream: DotUpstream | DohUpstream = (
                        DotUpstream("127.0.0.1", port, settings)
                        if transport == "dot"
                        else DohUpstream(f"https://127.0.0.1:{port}/dns-query", settings)
                    )
                    wire = await upstream.query(dns.message.make_query("whoami.", "TXT").to_wire(), 2)
                    assert PROD_ID in txt(wire)
                    await upstream.close()
            finally:
                await listener.close()

    uvloop.run(body())


def test_doq_refuses_inside_the_handshake_with_the_tls_alert(pki: Pki) -> None:
    """As DoT and DoH clients: the refusal is the handshake's TLS alert (QUIC CRYPTO_ERROR 0x100 + alert), not a
    DoQ error on a connection the server first completed."""
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated, QuicEvent

    class Watcher(QuicConnectionProtocol):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.closed: asyncio.Future[ConnectionTerminated] = asyncio.get_running_loop().create_future()

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, ConnectionTerminated) and not self.closed.done():
                self.closed.set_result(event)

    async def body() -> None:
        config = listen_config(pki, "doq", client_auth="require")
        listener = await start_doq_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        try:
            for name, alert in ((None, 116), ("revoked", 44), ("stranger", 48), ("expired", 45)):
                client = QuicConfiguration(is_client=True, alpn_protocols=["doq"], server_name="dns.test")
                client.load_verify_locations(str(pki.ca))
                if name is not None:
                    client.load_cert_chain(pki.cert(name), pki.key(name))
                async with connect(
                    "127.0.0.1", listener.address[1], configuration=client, create_protocol=Watcher
                ) as watcher:
                    assert isinstance(watcher, Watcher)
                    closed = await asyncio.wait_for(watcher.closed, 3)
                assert closed.error_code == 0x100 + alert, (name, closed)
        finally:
            await listener.close()

    asyncio.run(body())
