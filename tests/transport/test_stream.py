"""The TLS accept path that DoT and DoH share, on the server's event loop (uvloop)."""

from __future__ import annotations

import asyncio
import ssl

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
            assert listener.refusals.total == 0
        finally:
            await listener.close(drain_seconds=0.5)

    uvloop.run(body())
