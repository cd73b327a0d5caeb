"""The TLS accept path that DoT and DoH share, on the server's event loop (uvloop)."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl

import dns.message
import uvloop

from fixtures.tls import EchoHandler, Pki, listen_config
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial


def test_every_handshake_completes_under_uvloop(pki: Pki) -> None:
    """A ClientHello that arrives before the server starts its TLS layer must not be lost. (With create_server
    plus start_tls, uvloop read it into the plain protocol about one time in five: the handshake then stalled
    until handshake_timeout and dnsperf's queries on that connection waited with it.)"""

    async def body() -> None:
        config = listen_config(pki, "dot", handshake_timeout=3.0)
        listener = await start_dot_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.set_alpn_protocols(["dot"])
        try:
            for attempt in range(60):
                try:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(*listener.address, ssl=context, server_hostname="dns.test"), 2.0
                    )
                except (OSError, TimeoutError) as exc:
                    raise AssertionError(f"handshake {attempt} failed: {exc!r}") from exc
                writer.close()
                if attempt % 10 == 0:  # the server answers our close_notify with its own and closes, at once
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
            assert listener.refusals.total == 0
        finally:
            await listener.close(drain_seconds=0.5)

    uvloop.run(body())


def test_refused_handshakes_send_their_tls_alert(pki: Pki) -> None:
    """A client refused for its certificate learns why from the alert (openssl's own server sends it; asyncio's
    and uvloop's SSL transports dropped it, CPython gh-98078): TLS runs through memory BIOs (transport/tlsbio.py)."""

    async def body() -> None:
        config = listen_config(pki, "dot", client_auth="require")
        listener = await start_dot_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        loop = asyncio.get_running_loop()

        def refused(certificate: str | None) -> str:
            context = ssl.create_default_context(cafile=str(pki.ca))
            context.check_hostname = False
            if certificate is not None:
                context.load_cert_chain(pki.cert(certificate), pki.key(certificate))
            with socket.create_connection(listener.address, timeout=3) as raw:
                try:
                    with context.wrap_socket(raw) as tls:
                        tls.sendall(b"\x00\x01x")
                        tls.recv(10)
                except ssl.SSLError as exc:
                    return str(exc.reason)
                except OSError as exc:
                    return f"no alert: {exc!r}"
            return "no alert: connection kept"

        try:
            assert await loop.run_in_executor(None, refused, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
            assert await loop.run_in_executor(None, refused, "revoked") == "SSLV3_ALERT_CERTIFICATE_REVOKED"
            assert await loop.run_in_executor(None, refused, "stranger") == "TLSV1_ALERT_UNKNOWN_CA"
        finally:
            await listener.close(drain_seconds=0.5)

    uvloop.run(body())


def test_closed_tls_connections_are_freed_without_the_cycle_collector(pki: Pki) -> None:
    """A connection and its TLS layer must not keep each other alive: the server runs with rare full collections
    (gc.freeze and high thresholds), so each cycle held an SSL object and its OpenSSL buffers (~50 KB) until one
    came, and RSS grew by hundreds of MB under connection churn."""

    async def body() -> None:
        config = listen_config(pki, "dot")
        listener = await start_dot_listener(config, EchoHandler(), TlsMaterial.from_config(config))
        context = ssl.create_default_context(cafile=str(pki.ca))
        wire = dns.message.make_query("fast.", "A").to_wire()
        query = len(wire).to_bytes(2, "big") + wire

        async def one(abort: bool) -> None:
            reader, writer = await asyncio.open_connection(*listener.address, ssl=context, server_hostname="dns.test")
            writer.write(query)
            await reader.readexactly(2)
            if abort:
                writer.transport.abort()
            else:
                writer.close()
                await writer.wait_closed()

        try:
            await one(False)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            for index in range(20):
                await one(abort=bool(index % 2))
            await asyncio.sleep(0.3)
            gc.collect()
            kept = {type(o).__name__ for o in gc.garbage} & {"TlsBioProtocol", "SSLObject", "DotConnection"}
            assert not kept
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            await listener.close(drain_seconds=0.5)

    uvloop.run(body())
