"""RFC 2136 UPDATE over the resolver's mTLS DoT listener, authorised by the client certificate's SPIFFE ID
(docs/authority.md); other queries still go to the resolver."""

from __future__ import annotations

import ssl
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.name
import dns.rcode
import dns.update
import pytest

from authority_lab import Loop, signed_zone
from fixtures.tls import EchoHandler, Pki, listen_config, pki
from ztdns.authority.daemon import UpdateRouting
from ztdns.authority.handler import Authority
from ztdns.authority.update import Grant
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial

__all__ = ["pki"]
GRANT = Grant("spiffe://corp.example/ns/{ns}/{sa}", ("{sa}.{ns}.svc.corp.internal",))


@pytest.mark.slow
def test_update_over_mtls_dot_is_authorised_by_the_certificate(pki: Pki, tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(GRANT,))
    authority = Authority([zone])
    config = listen_config(pki, "dot", client_auth="require")
    loop = Loop()
    listener = loop.run(
        lambda: start_dot_listener(config, UpdateRouting(EchoHandler(), authority), TlsMaterial.from_config(config))
    )
    port = listener.address[1]

    def send(client: str, message: dns.message.Message) -> dns.message.Message:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.set_alpn_protocols(["dot"])
        context.load_cert_chain(pki.cert(client), pki.key(client))

        async def ask() -> dns.message.Message:
            return await dns.asyncquery.tls(
                message, "127.0.0.1", port=port, ssl_context=context, server_hostname="dns.test", timeout=5
            )

        response: dns.message.Message = loop.run(ask)
        return response

    try:
        serial = zone.zone.serial
        update = dns.update.UpdateMessage("corp.internal.")
        update.replace("web.prod.svc.corp.internal.", 30, "A", "10.1.2.3")
        assert send("dev", update).rcode() == dns.rcode.REFUSED  # another workload's name
        assert zone.zone.serial == serial
        assert send("prod", update).rcode() == dns.rcode.NOERROR
        assert zone.zone.serial != serial
        assert zone.zone.get(dns.name.from_text("web.prod.svc.corp.internal."), 1) is not None
        # A query still goes to the resolver's handler.
        answer = send("prod", dns.message.make_query("example.com.", "A"))
        assert answer.answer[0][0].address == "192.0.2.1"
    finally:
        loop.run(lambda: listener.close(1.0))
        loop.close()
