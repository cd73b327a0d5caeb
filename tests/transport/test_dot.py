from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from fixtures.tls import DEV_ID, PROD_ID, EchoHandler, Pki, kdig, listen_config
from fixtures.tools import needs
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.framing import frame
from ztdns.transport.tls import TlsMaterial


def client_context(pki: Pki, name: str | None = None, ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or pki.ca))
    context.set_alpn_protocols(["dot"])
    if name is not None:
        context.load_cert_chain(pki.cert(name), pki.key(name))
    return context


def kdig_tls(pki: Pki, port: int, *extra: str) -> list[str]:
    return ["@127.0.0.1", "-p", str(port), "+tls", f"+tls-ca={pki.ca}", "+tls-hostname=dns.test", *extra]


@pytest.mark.slow
@needs("kdig")
def test_kdig_with_and_without_client_certificates(pki: Pki) -> None:
    async def body() -> None:
        handler = EchoHandler()
        config = listen_config(pki, "dot", client_auth="optional")
        listener = await start_dot_listener(config, handler, TlsMaterial.from_config(config))
        port = listener.address[1]
        try:
            code, out = await kdig(
                *kdig_tls(
                    pki,
                    port,
                    f"+tls-certfile={pki.cert('prod')}",
                    f"+tls-keyfile={pki.key('prod')}",
                    "whoami.",
                    "TXT",
                )
            )
            assert code == 0 and f'"dot" "{PROD_ID}"' in out, out
            assert "PADDING" in out  # kdig pads its TLS queries, so we pad the answer
            code, out = await kdig(*kdig_tls(pki, port, "whoami.", "TXT"))
            assert code == 0 and '"dot" "-"' in out, out
            # Allowed vs denied per SPIFFE identity (the test handler plays the policy).
            code, out = await kdig(
                *kdig_tls(
                    pki,
                    port,
                    f"+tls-certfile={pki.cert('dev')}",
                    f"+tls-keyfile={pki.key('dev')}",
                    "x.denied.",
                    "A",
                )
            )
            assert "status: REFUSED" in out, out
            code, out = await kdig(
                *kdig_tls(
                    pki,
                    port,
                    f"+tls-certfile={pki.cert('prod')}",
                    f"+tls-keyfile={pki.key('prod')}",
                    "x.denied.",
                    "A",
                )
            )
            assert "status: NOERROR" in out and "192.0.2.1" in out, out
        finally:
            await listener.close()
        assert {c.certificate_identity for c in handler.clients} == {PROD_ID, DEV_ID, None}

    asyncio.run(body())


@pytest.mark.parametrize("client_auth", ["require", "optional"])
def test_bad_client_certificates_are_refused(pki: Pki, client_auth: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        handler = EchoHandler()
        config = listen_config(pki, "dot", client_auth=client_auth)
        listener = await start_dot_listener(config, handler, TlsMaterial.from_config(config))
        port = listener.address[1]
        query = dns.message.make_query("whoami.", "TXT")

        async def ask(name: str | None) -> str | None:
            try:
                response = await dns.asyncquery.tls(
                    query,
                    "127.0.0.1",
                    port=port,
                    timeout=3,
                    ssl_context=client_context(pki, name),
                    server_hostname="dns.test",
                )
            except (OSError, EOFError, ssl.SSLError, dns.exception.DNSException):
                return None
            return response.answer[0].to_text()

        try:
            assert PROD_ID in (await ask("prod") or "")
            for bad in ("expired", "revoked", "stranger"):
                assert await ask(bad) is None, bad
            nocert = await ask(None)
            if client_auth == "require":
                assert nocert is None
            else:
                assert nocert is not None and '"-"' in nocert
        finally:
            await listener.close()
        assert listener.refusals.total >= 3

    with caplog.at_level("WARNING"):
        asyncio.run(body())
    text = caplog.text
    assert "certificate has expired" in text
    assert "certificate revoked" in text
    assert "unable to get local issuer certificate" in text


def test_pipelined_out_of_order_and_rotation(pki: Pki, tmp_path: Path) -> None:
    """One connection sends a slow query then fast ones; the fast answers come first. Meanwhile the
    server certificate and CA rotate: the open connection keeps working, new ones see the new certificate."""

    async def body() -> None:
        live = tmp_path / "live"
        live.mkdir()
        for suffix in ("crt", "key"):
            (live / f"server.{suffix}").write_bytes(pki.dir.joinpath(f"server.{suffix}").read_bytes())
        config = listen_config(
            pki, "dot", client_auth="require", cert=str(live / "server.crt"), key=str(live / "server.key")
        )
        material = TlsMaterial.from_config(config)
        listener = await start_dot_listener(config, EchoHandler(delay=0.5), material)
        port = listener.address[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki, "prod"), server_hostname="dns.test"
            )
            first_cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            queries = [dns.message.make_query(name, "A") for name in ("a.slow.", "b.fast.", "c.example.")]
            writer.write(b"".join(frame(q.to_wire()) for q in queries))
            order = []
            for _ in queries:
                length = int.from_bytes(await reader.readexactly(2), "big")
                order.append(dns.message.from_wire(await reader.readexactly(length)).id)
            assert order[-1] == queries[0].id and set(order) == {q.id for q in queries}

            # Rotate: a broken file first (kept old material), then a good new certificate.
            (live / "server.crt").write_bytes(b"garbage")
            assert not listener.reload()
            (live / "server.crt").write_bytes(pki.cert("server2").read_bytes())
            (live / "server.key").write_bytes(pki.key("server2").read_bytes())
            assert listener.reload()
            assert material.current.number == 2

            # The old connection still answers, pipelined.
            again = [dns.message.make_query(f"{i}.example.", "A") for i in range(5)]
            writer.write(b"".join(frame(q.to_wire()) for q in again))
            for _ in again:
                length = int.from_bytes(await reader.readexactly(2), "big")
                assert dns.message.from_wire(await reader.readexactly(length)).rcode() == dns.rcode.NOERROR
            _, writer2 = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki, "prod"), server_hostname="dns.test"
            )
            second_cert = writer2.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert second_cert != first_cert
            writer.close()
            writer2.close()
        finally:
            await listener.close()

    asyncio.run(body())


def test_polling_picks_up_new_files(pki: Pki, tmp_path: Path) -> None:
    async def body() -> None:
        cert, key = tmp_path / "s.crt", tmp_path / "s.key"
        cert.write_bytes(pki.cert("server").read_bytes())
        key.write_bytes(pki.key("server").read_bytes())
        config = listen_config(pki, "dot", cert=str(cert), key=str(key), tls_reload_interval=0.05)
        material = TlsMaterial.from_config(config)
        listener = await start_dot_listener(config, EchoHandler(), material)
        try:
            cert.write_bytes(pki.cert("server2").read_bytes())
            key.write_bytes(pki.key("server2").read_bytes())
            for _ in range(100):
                if material.current.number == 2:
                    break
                await asyncio.sleep(0.02)
            assert material.current.number == 2
        finally:
            await listener.close()

    asyncio.run(body())


def test_slow_handshake_does_not_stall_others(pki: Pki) -> None:
    """Clients that open TCP and send half a ClientHello (or nothing) must not delay other clients."""

    async def body() -> None:
        config = listen_config(pki, "dot", client_auth="require", handshake_timeout=2.0)
        listener = await start_dot_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        port = listener.address[1]
        stalled = []
        try:
            for _ in range(20):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello that never finishes
                stalled.append(w)
            started = time.monotonic()
            for _ in range(5):
                response = await dns.asyncquery.tls(
                    dns.message.make_query("ok.example.", "A"),
                    "127.0.0.1",
                    port=port,
                    timeout=2,
                    ssl_context=client_context(pki, "prod"),
                    server_hostname="dns.test",
                )
                assert response.rcode() == dns.rcode.NOERROR
            assert time.monotonic() - started < 1.5
        finally:
            for w in stalled:
                w.close()
            await listener.close()

    asyncio.run(body())


def test_idle_timeout_max_connections_and_garbage(pki: Pki) -> None:
    async def body() -> None:
        config = listen_config(pki, "dot", idle_timeout=0.3, max_connections=2)
        listener = await start_dot_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        port = listener.address[1]
        try:
            reader, _ = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki), server_hostname="dns.test"
            )
            reader2, writer2 = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki), server_hostname="dns.test"
            )
            # Third connection is over the limit: closed at once.
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                r3, w3 = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(pki), server_hostname="dns.test"
                )
                w3.write(frame(dns.message.make_query("x.", "A").to_wire()))
                await asyncio.wait_for(r3.readexactly(2), 2)
            # A zero-length frame is not DNS: that connection is cut, the other lives on.
            writer2.write(b"\x00\x00")
            assert await asyncio.wait_for(reader2.read(), 2) == b""
            # Idle connection closed after the timeout.
            assert await asyncio.wait_for(reader.read(), 3) == b""
            response = await dns.asyncquery.tls(
                dns.message.make_query("ok.example.", "A"),
                "127.0.0.1",
                port=port,
                timeout=2,
                ssl_context=client_context(pki),
                server_hostname="dns.test",
            )
            assert response.rcode() == dns.rcode.NOERROR
        finally:
            await listener.close()

    asyncio.run(body())


def test_drain_answers_in_flight_queries(pki: Pki) -> None:
    async def body() -> None:
        config = listen_config(pki, "dot")
        listener = await start_dot_listener(config, EchoHandler(delay=0.3), TlsMaterial.from_config(config))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.address[1], ssl=client_context(pki), server_hostname="dns.test"
        )
        query = dns.message.make_query("in-flight.slow.", "A")
        writer.write(frame(query.to_wire()))
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(listener.close(drain_seconds=2))
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 2), "big")
        assert dns.message.from_wire(await reader.readexactly(length)).id == query.id
        await closing
        assert await reader.read() == b""

    asyncio.run(body())
