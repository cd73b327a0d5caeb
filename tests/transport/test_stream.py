"""The TLS accept path that DoT and DoH share, on the server's event loop (uvloop)."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import ssl
import subprocess

import dns.message
import pytest
import uvloop

from fixtures.tls import EchoHandler, Pki, listen_config
from fixtures.tools import require_tool
from ztdns.transport.doh import start_doh_listener
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


@pytest.mark.parametrize("transport", ["dot", "doh"])
def test_openssl_sees_the_alert_and_a_chain_without_our_ca(pki: Pki, transport: str) -> None:
    """``openssl s_client -trace``: a client without a certificate gets alert 116 (certificate_required), and
    the server's chain is its certificate alone — no CA certificate (sslyze warns on one), although the listener
    holds the CA bundle to verify clients and OpenSSL would complete the chain from it."""
    openssl = require_tool("openssl")

    async def body() -> None:
        config = listen_config(pki, transport, client_auth="require", crl=[])  # no CRL, as `ztdns pki` sets up
        start = start_dot_listener if transport == "dot" else start_doh_listener
        listener = await start(config, EchoHandler(), TlsMaterial.from_config(config))
        host, port = listener.address
        loop = asyncio.get_running_loop()

        def s_client(*extra: str) -> str:
            command = [openssl, "s_client", "-connect", f"{host}:{port}", "-servername", "dns.test", "-trace"]
            run = subprocess.run([*command, *extra], input=b"", capture_output=True, timeout=10, check=False)
            return run.stdout.decode(errors="replace")

        try:
            refused = await loop.run_in_executor(None, s_client, "-ign_eof")  # read on until the server closes
            # OpenSSL 3.0's trace names 116 "unknown": its table predates certificate_required.
            alert = r"Inner Content Type = Alert \(21\)\n\s+Level=fatal\(2\), description=[\w ]+\(116\)"
            assert re.search(alert, refused), refused
            accepted = await loop.run_in_executor(
                None, s_client, "-cert", str(pki.cert("prod")), "-key", str(pki.key("prod"))
            )
            # The certificates in what we received (the trace lists each as "ASN.1Cert"): the server's alone.
            received = [b for b in re.split(r"\n(?=Sent Record|Received Record)", accepted) if b.startswith("Received")]
            assert [b.count("ASN.1Cert") for b in received if "ASN.1Cert" in b] == [1], accepted
        finally:
            await listener.close(drain_seconds=0.5)

    uvloop.run(body())
