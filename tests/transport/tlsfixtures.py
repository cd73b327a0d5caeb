"""Fixtures for encrypted transport tests: a PKI with good and bad client certificates, a test handler."""

from __future__ import annotations

import asyncio
import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ztdns.client import ClientInfo
from ztdns.config.model import ListenConfig
from ztdns.pki import init_ca, issue, revoke

PROD_ID = "spiffe://corp.example/ns/prod/web"
DEV_ID = "spiffe://corp.example/ns/dev/tool"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    crl: Path
    other_ca: Path

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    init_ca(base)
    issue(base, "server", dns_names=("dns.test", "localhost"), ip_addresses=("127.0.0.1",), usage="server")
    issue(base, "server2", dns_names=("dns.test", "localhost"), ip_addresses=("127.0.0.1",), usage="server")
    issue(base, "prod", spiffe_id=PROD_ID, usage="client")
    issue(base, "dev", spiffe_id=DEV_ID, usage="client")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    issue(base, "expired", spiffe_id=PROD_ID, usage="client", days=1, not_before=old)
    issue(base, "revoked", spiffe_id=PROD_ID, usage="client")
    revoke(base, "revoked")
    other = base / "other"
    init_ca(other, common_name="someone else's CA")
    issue(other, "stranger", spiffe_id=PROD_ID, usage="client")
    for name in ("stranger.crt", "stranger.key"):
        shutil.copy(other / name, base / name)
    return Pki(base, base / "ca.crt", base / "crl.pem", other / "ca.crt")


def listen_config(pki: Pki, transport: str, client_auth: str = "off", **extra: object) -> ListenConfig:
    values: dict[str, object] = {
        "transport": transport,
        "address": "127.0.0.1:0",
        "cert": str(pki.cert("server")),
        "key": str(pki.key("server")),
        "client_auth": client_auth,
    }
    if client_auth != "off":
        values |= {"ca": str(pki.ca), "crl": [str(pki.crl)]}
    values |= extra
    return ListenConfig.model_validate(values)


class EchoHandler:
    """Answers every A query with 192.0.2.1 and ``whoami. TXT`` with the transport and certificate identity.
    Names under ``slow.`` wait ``delay`` seconds first (in ``handle``); ``fast.`` names answer in ``fast``.
    ``denied.`` is REFUSED for clients whose identity is not PROD_ID (what the policy stage would do)."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self.clients: list[ClientInfo] = []

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        if b"\x04fast\x00" in wire:
            return self.answer(wire, client)
        return None

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        if b"\x04slow\x00" in wire:
            await asyncio.sleep(self.delay)
        if b"\x04drop\x00" in wire:
            return None
        return self.answer(wire, client)

    def answer(self, wire: bytes, client: ClientInfo) -> bytes:
        self.clients.append(client)
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        if name.endswith("denied.") and client.certificate_identity != PROD_ID:
            response.set_rcode(dns.rcode.REFUSED)
        elif question.rdtype == dns.rdatatype.TXT:
            text = f'"{client.transport.value}" "{client.certificate_identity or "-"}"'
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "TXT", text))
        else:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "192.0.2.1"))
        return response.to_wire()


async def kdig(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "kdig", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 10)
    return process.returncode or 0, out.decode()


def needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")
