"""The HTTPS registration API over real mTLS: a SPIFFE identity registers the names its grant allows and
nothing else; refused requests leave the zone (and its serial) unchanged; no or foreign certificates never
get past the handshake."""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.update
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authority_lab import Loop, signed_zone
from fixtures.tls import PROD_ID, Pki, pki
from ztdns.authority.api import api_listen_config, registration_response, start_registration_api
from ztdns.authority.handler import Authority
from ztdns.authority.update import Grant
from ztdns.client import ClientInfo, Transport
from ztdns.identity.certificates import identity_from_certificate
from ztdns.pki.authority import _load_ca
from ztdns.transport.tls import TlsMaterial

__all__ = ["pki"]
# spiffe://corp.example/ns/prod/web may register web.prod.svc.corp.internal (and below it with *.).
GRANT = Grant("spiffe://corp.example/ns/{ns}/{sa}", ("{sa}.{ns}.svc.corp.internal", "*.{sa}.{ns}.svc.corp.internal"))
UDP = ClientInfo(Transport.UDP, "127.0.0.1", 1)


@pytest.fixture
def api(pki: Pki, tmp_path: Path) -> Iterator[tuple[Authority, int]]:
    authority = Authority([signed_zone(tmp_path, grants=(GRANT,))])
    listen = api_listen_config(
        "127.0.0.1:0", str(pki.cert("server")), str(pki.key("server")), str(pki.ca), [str(pki.crl)], "1.3"
    )
    loop = Loop()
    listener = loop.run(lambda: start_registration_api(listen, authority, TlsMaterial.from_config(listen)))
    try:
        yield authority, listener.address[1]
    finally:
        loop.run(lambda: listener.close(1.0))
        loop.close()


def request(pki: Pki, port: int, client: str | None, method: str, path: str, body: object = None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(pki.cert(client)), str(pki.key(client)))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def lookup(authority: Authority, name: str) -> dns.message.Message:
    wire = authority.fast(dns.message.make_query(name, "A", want_dnssec=True).to_wire(), UDP)
    assert wire
    return dns.message.from_wire(wire)


def test_identity_registers_its_own_names_only(api: tuple[Authority, int], pki: Pki) -> None:
    authority, port = api
    zone = authority.zones[dns.name.from_text("corp.internal.")]
    serial = zone.zone.serial
    status, text = request(
        pki, port, "prod", "PUT", "/v1/records/web.prod.svc.corp.internal/A", {"ttl": 30, "rdata": ["10.1.2.3"]}
    )
    assert status == 200, text
    assert json.loads(text) == {"zone": "corp.internal.", "serial": serial + 1}
    answer = lookup(authority, "web.prod.svc.corp.internal.")
    assert answer.answer[0][0].address == "10.1.2.3" and answer.answer[1].rdtype == dns.rdatatype.RRSIG
    status, _ = request(
        pki, port, "prod", "PUT", "/v1/records/api.web.prod.svc.corp.internal/A", {"rdata": ["10.1.2.4"]}
    )
    assert status == 200
    serial = zone.zone.serial

    # Another workload's name, a name outside every grant, a type the grant does not give: 403, zone unchanged.
    refused = [
        ("prod", "PUT", "/v1/records/db.prod.svc.corp.internal/A", {"rdata": ["10.6.6.6"]}),
        ("dev", "PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": ["10.6.6.6"]}),
        ("dev", "DELETE", "/v1/records/web.prod.svc.corp.internal/A", None),
        ("prod", "PUT", "/v1/records/www.corp.internal/A", {"rdata": ["10.6.6.6"]}),
        ("prod", "PUT", "/v1/records/web.prod.svc.corp.internal/NS", {"rdata": ["ns.example."]}),
    ]
    for client, method, path, body in refused:
        status, text = request(pki, port, client, method, path, body)
        assert status == 403 and "may not update" in text, (client, path, text)
    assert zone.zone.serial == serial
    assert lookup(authority, "db.prod.svc.corp.internal.").rcode() == dns.rcode.NXDOMAIN
    assert lookup(authority, "web.prod.svc.corp.internal.").answer[0][0].address == "10.1.2.3"
    assert authority.stats.updates_refused == len(refused)

    # dev registers its own name; prod removes its own.
    assert (
        request(pki, port, "dev", "PUT", "/v1/records/tool.dev.svc.corp.internal/A", {"rdata": ["10.2.0.1"]})[0] == 200
    )
    assert request(pki, port, "prod", "DELETE", "/v1/records/web.prod.svc.corp.internal/A")[0] == 200
    assert lookup(authority, "web.prod.svc.corp.internal.").rcode() == dns.rcode.NOERROR  # ENT above api.web
    assert not lookup(authority, "web.prod.svc.corp.internal.").answer


def test_bad_requests_change_nothing(api: tuple[Authority, int], pki: Pki) -> None:
    authority, port = api
    zone = authority.zones[dns.name.from_text("corp.internal.")]
    serial = zone.zone.serial
    cases = [
        ("PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": ["not-an-address"]}, 400),
        ("PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": []}, 400),
        ("PUT", "/v1/records/web.prod.svc.corp.internal/A", {"ttl": -1, "rdata": ["10.0.0.1"]}, 400),
        ("PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": ["10.0.0.1"], "owner": "x"}, 400),
        ("PUT", "/v1/records/web.prod.svc.corp.internal/NOTATYPE", {"rdata": ["10.0.0.1"]}, 400),
        ("PUT", "/v1/records/web.prod.svc.example.org/A", {"rdata": ["10.0.0.1"]}, 404),
        ("GET", "/v1/records/web.prod.svc.corp.internal/A", None, 405),
        ("PUT", "/elsewhere", {"rdata": ["10.0.0.1"]}, 404),
    ]
    for method, path, body, expected in cases:
        status, text = request(pki, port, "prod", method, path, body)
        assert status == expected, (path, body, text)
    assert zone.zone.serial == serial


def test_certificates_are_required_and_verified(api: tuple[Authority, int], pki: Pki) -> None:
    _, port = api
    for client in (None, "stranger", "revoked"):  # none, another CA, revoked (CRL)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(pki, port, client, "PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": ["10.0.0.1"]})


def test_request_without_identity_is_unauthorised(tmp_path: Path) -> None:
    authority = Authority([signed_zone(tmp_path, grants=(GRANT,))])
    body = json.dumps({"rdata": ["10.0.0.1"]}).encode()
    response = registration_response(
        authority, "PUT", "/v1/records/web.prod.svc.corp.internal/A", "application/json", body, None
    )
    assert response.status == 401
    assert (
        registration_response(
            authority, "PUT", "/v1/records/web.prod.svc.corp.internal/A", "text/plain", body, PROD_ID
        ).status
        == 415
    )


def _issue_cn_only(pki: Pki, name: str, common_name: str, dns_san: str | None = None) -> None:
    """A client certificate from the test CA whose subject CN reads like a SPIFFE ID, without a URI SAN."""
    ca_cert, ca_key = _load_ca(pki.dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if dns_san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_san)]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pki.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key(name).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_a_cn_that_reads_like_a_spiffe_id_never_registers(api: tuple[Authority, int], pki: Pki) -> None:
    """Registration authorises by the URI SAN only: a CN (or a DNS SAN) never stands in for a SPIFFE ID."""
    authority, port = api
    zone = authority.zones[dns.name.from_text("corp.internal.")]
    _issue_cn_only(pki, "fake", "spiffe://corp.example/ns/prod/web")
    _issue_cn_only(pki, "fake-dns", "spiffe://corp.example/ns/prod/web", dns_san="web.example")
    serial = zone.zone.serial
    for client in ("fake", "fake-dns"):
        status, text = request(
            pki, port, client, "PUT", "/v1/records/web.prod.svc.corp.internal/A", {"rdata": ["10.6.6.6"]}
        )
        assert status == 401 and "SPIFFE ID" in text, (client, text)
    assert zone.zone.serial == serial
    der = pki.cert("fake").read_bytes()
    cert = x509.load_pem_x509_certificate(der).public_bytes(serialization.Encoding.DER)
    assert identity_from_certificate(cert) is None
    assert identity_from_certificate(cert, cn=True) is None  # a CN with "://" names nothing, even when allowed
    # And over DNS UPDATE without TSIG: a DNS SAN identity is no SPIFFE ID either.
    update = dns.update.UpdateMessage("corp.internal.")
    update.replace("web.prod.svc.corp.internal.", 30, "A", "10.6.6.6")
    dot = ClientInfo(Transport.DOT, "127.0.0.1", 1, certificate_identity="web.example", stream=True)
    response = dns.message.from_wire(authority.respond(update.to_wire(), dot)[0])
    assert response.rcode() == dns.rcode.REFUSED and zone.zone.serial == serial
