"""Forwarder over DoT, DoH and DoQ upstreams: client certificates, connection reuse, padding, failover, EDE."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest
from pydantic import ValidationError

from fixtures.tls import DEV_ID, PROD_ID, EchoHandler, Pki, listen_config
from ztdns.client import ClientInfo
from ztdns.config import ConfigError, parse_config
from ztdns.config.resolver import ResolverConfig, UpstreamConfig
from ztdns.handler import make_resolver
from ztdns.model import EDE, Question, Resolution
from ztdns.pki.pin import spki_pin
from ztdns.resolver.forward import Forwarder
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.doq import start_doq_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial

START: dict[str, Callable[..., Awaitable[Any]]] = {
    "dot": start_dot_listener,
    "doh": start_doh_listener,
    "doq": start_doq_listener,
}


class RecordingHandler(EchoHandler):
    """EchoHandler that also keeps the query bytes; ``wrong.`` names get the answer to another question."""

    def __init__(self) -> None:
        super().__init__()
        self.wires: list[bytes] = []

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        self.wires.append(wire)
        if b"\x05wrong\x00" in wire:
            query = dns.message.from_wire(wire)
            other = dns.message.make_query("other.", "A")
            other.id = query.id
            return dns.message.make_response(other).to_wire()
        return await super().handle(wire, client)


@asynccontextmanager
async def listener(pki: Pki, transport: str, handler: EchoHandler) -> AsyncIterator[int]:
    config = listen_config(pki, transport, client_auth="require")
    started = await START[transport](config, handler, TlsMaterial.from_config(config))
    try:
        yield started.address[1]
    finally:
        await started.close()


def upstream(pki: Pki, transport: str, port: int, client: str = "prod", **extra: Any) -> UpstreamConfig:
    values: dict[str, Any] = {
        "transport": transport,
        "address": f"127.0.0.1:{port}",
        "server_name": "dns.test",
        "ca": str(pki.ca),
        "cert": str(pki.cert(client)),
        "key": str(pki.key(client)),
    }
    return UpstreamConfig.model_validate(values | extra)


def question(name: str, rdtype: str = "TXT") -> Question:
    return Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), dns.rdataclass.IN)


def txt(resolution: Resolution) -> str:
    assert resolution.response is not None, resolution.reason
    return resolution.response.answer[0].to_text()


@pytest.mark.parametrize("transport", ["dot", "doh", "doq"])
def test_forwards_with_our_client_certificate_over_one_reused_connection(pki: Pki, transport: str) -> None:
    async def body() -> None:
        handler = RecordingHandler()
        async with listener(pki, transport, handler) as port:
            forwarder = Forwarder(ResolverConfig(upstreams=[upstream(pki, transport, port)]))
            try:
                answers = await asyncio.gather(*(forwarder.resolve(question(f"whoami{i}.")) for i in range(6)))
                assert all(f'"{transport}" "{PROD_ID}"' in txt(a) for a in answers)
                scheme = {"dot": "tls://", "doh": "https://", "doq": "quic://"}[transport]
                assert all(a.upstream is not None and a.upstream.startswith(scheme) for a in answers)
                # DoQ may open its connection twice when the first queries race; DoT and DoH share one.
                assert len({c.port for c in handler.clients}) == 1
                # RFC 8467: queries to encrypted upstreams are padded to 128-octet blocks.
                for wire in handler.wires:
                    query = dns.message.from_wire(wire)
                    assert any(option.otype == dns.edns.OptionType.PADDING for option in query.options)
                    assert len(wire) % 128 == 0
                (health,) = forwarder.health()
                assert health.up and health.queries == 6 and health.errors == 0
            finally:
                await forwarder.close()

    asyncio.run(body())


def test_verification_failures_are_network_errors_and_fail_over(pki: Pki) -> None:
    async def body() -> None:
        handler = RecordingHandler()
        async with listener(pki, "dot", handler) as dot, listener(pki, "doh", handler) as doh:
            pin = spki_pin_of_server(pki)
            config = ResolverConfig(
                upstreams=[
                    upstream(pki, "dot", dot, ca=str(pki.other_ca)),
                    upstream(pki, "doh", doh, spki_pin="A" * 43 + "="),
                    upstream(pki, "dot", dot, server_name="other.test"),
                    upstream(pki, "doh", doh, client="dev", spki_pin=pin),
                ],
                attempts=4,
            )
            forwarder = Forwarder(config)
            try:
                resolution = await forwarder.resolve(question("whoami."))
                assert DEV_ID in txt(resolution)  # the fourth upstream answered
                failed = [h for h in forwarder.health() if h.errors]
                assert len(failed) == 3
                only_bad = Forwarder(ResolverConfig(upstreams=config.upstreams[:3], attempts=3))
                resolution = await only_bad.resolve(question("whoami."))
                await only_bad.close()
            finally:
                await forwarder.close()
        assert resolution.response is None and resolution.reason is not None
        assert resolution.reason.ede is EDE.NETWORK_ERROR
        text = resolution.reason.text
        # Our listeners send no CA certificate (docs/transports.md), so a client trusting another CA finds no issuer.
        assert f"tls://127.0.0.1:{dot} certificate verify failed: unable to get local issuer certificate" in text
        assert f"https://127.0.0.1:{doh}/dns-query server certificate does not match the SPKI pin" in text
        assert "certificate verify failed: hostname mismatch, certificate is not valid for 'other.test'" in text.lower()

    asyncio.run(body())


def spki_pin_of_server(pki: Pki) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(pki.cert("server").read_bytes())
    return spki_pin(certificate.public_bytes(serialization.Encoding.DER))


def test_silent_tls_upstream_times_out_with_ede_22(pki: Pki) -> None:
    async def body() -> None:
        # Accepts TCP (the kernel does) but never speaks TLS: the handshake times out.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            port = silent.getsockname()[1]
            config = ResolverConfig(upstreams=[upstream(pki, "dot", port)], timeout=0.3, attempts=2, budget=1)
            forwarder = Forwarder(config)
            try:
                resolution = await forwarder.resolve(question("whoami."))
            finally:
                await forwarder.close()
        assert resolution.reason is not None and resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
        assert resolution.reason.text == f"upstreams tls://127.0.0.1:{port} timeout"

    asyncio.run(body())


def test_answer_to_another_question_is_rejected(pki: Pki) -> None:
    async def body() -> None:
        async with listener(pki, "dot", RecordingHandler()) as port:
            forwarder = Forwarder(ResolverConfig(upstreams=[upstream(pki, "dot", port)], attempts=1))
            try:
                resolution = await forwarder.resolve(question("wrong.", "A"))
            finally:
                await forwarder.close()
        assert resolution.reason is not None and resolution.reason.ede is EDE.NETWORK_ERROR
        assert resolution.reason.text.endswith("answer does not match the question")

    asyncio.run(body())


def test_upstream_config_checks(pki: Pki, tmp_path: Path) -> None:
    assert UpstreamConfig(address="192.0.2.1", transport="dot").hostport() == ("192.0.2.1", 853)
    assert UpstreamConfig(address="192.0.2.1", transport="doh").hostport() == ("192.0.2.1", 443)
    assert UpstreamConfig(address="192.0.2.1", transport="doq").hostport() == ("192.0.2.1", 853)
    assert UpstreamConfig(address="192.0.2.1").hostport() == ("192.0.2.1", 53)
    with pytest.raises(ValidationError, match="only apply to encrypted upstreams"):
        UpstreamConfig(address="192.0.2.1", ca="ca.pem")
    with pytest.raises(ValidationError, match="SHA-256"):
        UpstreamConfig(address="192.0.2.1", transport="dot", spki_pin="abc")
    with pytest.raises(ValidationError, match="cert and key go together"):
        UpstreamConfig(address="192.0.2.1", transport="dot", cert="c.pem")
    # A TLS file that cannot be read is a config error naming the file, the line and the upstream.
    text = f"""
[resolver]
upstreams = [
  {{ address = "127.0.0.1:853", transport = "dot", ca = "{tmp_path / "missing.pem"}" }},
]
"""
    config = parse_config(text, "forward.toml", tmp_path)
    with pytest.raises(ConfigError, match=r"forward.toml:4: resolver.upstreams\[0\].ca: no such file.*missing.pem"):
        make_resolver(config)
