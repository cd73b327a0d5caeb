"""Client ids claimed in the DoH path (/dns-query/ID): carried to the handler as a claim, mapped to identities
after certificates and before addresses."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import dns.message
import pytest

from fixtures.tls import EchoHandler, Pki, listen_config, pki
from ztdns.client import ClientInfo, Transport
from ztdns.config import ConfigError, parse_config
from ztdns.identity import IdentityMap
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.doq import start_doq_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.tls import TlsMaterial

__all__ = ["pki"]

IDENTITIES = """
[identities.lan]
networks = ["10.0.0.0/8"]
policies = ["p"]

[identities.kid]
client_ids = ["kid-laptop", "kid-phone"]
policies = ["p"]

[identities.prod]
certificates = ["spiffe://corp.example/prod"]
policies = ["p"]

[policies.p]
allow = ["**"]
"""


def test_client_ids_map_after_certificates_and_before_addresses(tmp_path: Path) -> None:
    identities = IdentityMap(parse_config(IDENTITIES, "t.toml", tmp_path))

    def who(**kwargs: object) -> str | None:
        found = identities.match(ClientInfo(Transport.DOH, "10.1.2.3", 443, **kwargs))  # type: ignore[arg-type]
        return None if found is None else f"{found.identity}: {found.how}"

    assert who() == "lan: network 10.0.0.0/8"
    assert who(client_id="kid-phone") == "kid: client id kid-phone (claimed)"
    assert who(client_id="unknown-id") == "lan: network 10.0.0.0/8"
    assert who(client_id="kid-phone", certificate_identity="spiffe://corp.example/prod") == (
        "prod: certificate spiffe://corp.example/prod"
    )


def test_client_id_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client id"):
        parse_config('[identities.a]\nclient_ids = ["Kid Laptop"]\npolicies = ["p"]\n[policies.p]\n', "t", tmp_path)
    with pytest.raises(ConfigError, match="already belongs"):
        parse_config(
            '[identities.a]\nclient_ids = ["x"]\npolicies = ["p"]\n[identities.b]\nclient_ids = ["x"]\n'
            'policies = ["p"]\n[policies.p]\n',
            "t",
            tmp_path,
        )


async def post(pki: Pki, http: str, port: int, query: Path, path: str) -> bytes:
    """POST the DNS query in ``query`` to ``path`` with curl; the HTTP status."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", http, "--cacert", str(pki.ca), "--resolve", f"dns.test:{port}:127.0.0.1",
        "-H", "content-type: application/dns-message", "--data-binary", f"@{query}",
        "-o", "/dev/null", "-w", "%{http_code}", f"https://dns.test:{port}{path}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 15)
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_doh_path_carries_the_client_id(pki: Pki, tmp_path: Path, http: str) -> None:
    async def body() -> None:
        handler = EchoHandler()
        config = listen_config(pki, "doh")
        listener = await start_doh_listener(config, handler, TlsMaterial.from_config(config))
        port = listener.address[1]
        query = tmp_path / "query"
        try:
            for name, path, expected in (
                ("fast.", "/dns-query/kid-laptop", "kid-laptop"),  # answered on the fast path
                ("slow-ish.example.", "/dns-query/kid-phone", "kid-phone"),  # answered by handle()
                ("fast.", "/dns-query", None),
            ):
                query.write_bytes(dns.message.make_query(name, "A").to_wire())
                assert await post(pki, http, port, query, path) == b"200"
                assert handler.clients[-1].client_id == expected
            # Not a valid id: not a DoH URL at all.
            assert await post(pki, http, port, query, "/dns-query/Not_Valid") == b"404"
        finally:
            await listener.close()

    asyncio.run(body())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kdig") is None, reason="kdig is not installed (Debian package knot-dnsutils)")
def test_dot_server_name_carries_the_client_id(pki: Pki) -> None:
    async def body() -> None:
        handler = EchoHandler()
        config = listen_config(pki, "dot")
        listener = await start_dot_listener(config, handler, TlsMaterial.from_config(config))
        port = listener.address[1]
        try:
            for sni, expected in (
                ("kid-phone.dns.test", "kid-phone"),
                ("dns.test", None),  # two labels: the server's own name, no id
                ("Not_Valid.dns.test", None),
            ):
                process = await asyncio.create_subprocess_exec(
                    "kdig", "+tls", f"+tls-sni={sni}", f"+tls-ca={pki.ca}", "+time=5", "+retry=0",
                    "-p", str(port), "@127.0.0.1", "fast.", "A",
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(process.communicate(), 15)
                assert b"192.0.2.1" in out, out
                assert handler.clients[-1].client_id == expected
        finally:
            await listener.close()

    asyncio.run(body())


def test_doq_server_name_carries_the_client_id(pki: Pki) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    async def body() -> None:
        handler = EchoHandler()
        config = listen_config(pki, "doq")
        listener = await start_doq_listener(config, handler, TlsMaterial.from_config(config))
        try:
            for sni, expected in (("kid-laptop.dns.test", "kid-laptop"), ("dns.test", None)):
                # The test certificate names dns.test only: this client does not check the name it asked for.
                client = QuicConfiguration(is_client=True, alpn_protocols=["doq"], server_name=sni)
                client.verify_mode = ssl.CERT_NONE
                async with connect("127.0.0.1", listener.address[1], configuration=client) as connection:
                    reader, writer = await connection.create_stream()
                    query = dns.message.make_query("fast.", "A")
                    query.id = 0
                    wire = query.to_wire()
                    writer.write(len(wire).to_bytes(2, "big") + wire)
                    writer.write_eof()
                    answer = await asyncio.wait_for(reader.read(), 5)
                    assert b"\xc0\x00\x02\x01" in answer  # 192.0.2.1
                assert handler.clients[-1].client_id == expected
        finally:
            await listener.close()

    asyncio.run(body())
