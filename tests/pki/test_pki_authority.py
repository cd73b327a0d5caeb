from __future__ import annotations

import datetime
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztdns.cli import main
from ztdns.identity.certificates import identity_from_certificate
from ztdns.pki import PkiError, ensure_development_pki, init_ca, issue, revoke


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.mark.slow
def test_cli_init_issue_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = tmp_path / "pki"
    assert main(["pki", "init", str(pki)]) == 0
    assert (
        main(
            [
                "pki",
                "issue",
                str(pki),
                "web",
                "--spiffe-id",
                "spiffe://corp.example/ns/prod/web",
                "--dns",
                "web.corp.example",
                "--ip",
                "10.0.0.1",
                "--days",
                "2",
                "--client",
            ]
        )
        == 0
    )
    key_mode = stat.S_IMODE((pki / "web.key").stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((pki / "web.crt").read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=2)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [oid.dotted_string for oid in eku] == ["1.3.6.1.5.5.7.3.2"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert identity_from_certificate(_der(pki / "web.crt")) == "spiffe://corp.example/ns/prod/web"
    # The chain verifies with OpenSSL itself, and the CRL revokes it.
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "ca.crt"), str(pki / "web.crt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert main(["pki", "revoke", str(pki), "web"]) == 0
    revoked = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(pki / "ca.crt"),
            "-CRLfile",
            str(pki / "crl.pem"),
            str(pki / "web.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    # Errors are messages, not tracebacks.
    assert main(["pki", "init", str(pki)]) == 1
    assert main(["pki", "issue", str(tmp_path / "nope"), "x"]) == 1
    assert main(["pki", "issue", str(pki), "x", "--spiffe-id", "http://x"]) == 1
    assert main(["pki", "issue", str(pki), "../x"]) == 1
    assert "refusing" in capsys.readouterr().err


def test_identity_order(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issue(tmp_path, "dns", dns_names=("A.example", "b.example"), usage="client")
    issue(tmp_path, "cn", usage="client")
    issue(tmp_path, "both", spiffe_id="spiffe://td/x", dns_names=("a.example",), usage="both")
    assert identity_from_certificate(_der(tmp_path / "dns.crt")) == "a.example"
    assert identity_from_certificate(_der(tmp_path / "cn.crt")) is None  # CN only where configured
    assert identity_from_certificate(_der(tmp_path / "cn.crt"), cn=True) == "cn"
    assert identity_from_certificate(_der(tmp_path / "both.crt")) == "spiffe://td/x"
    assert identity_from_certificate(b"not a certificate") is None


def test_development_pki_is_created_once(tmp_path: Path) -> None:
    first = ensure_development_pki(tmp_path)
    before = first.server_cert.read_bytes()
    second = ensure_development_pki(tmp_path)
    assert second.server_cert.read_bytes() == before
    assert identity_from_certificate(_der(second.client_cert)) == second.client_identity
    server = x509.load_pem_x509_certificate(before)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_revoke_unknown(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(PkiError):
        revoke(tmp_path, "ghost")


def test_development_listeners(tmp_path: Path) -> None:
    from ztdns.transport.development import development_listeners, how_to_query
    from ztdns.transport.tls import TlsMaterial

    listeners, pki = development_listeners(tmp_path)
    assert [(c.transport, c.address) for c in listeners] == [
        ("dot", "127.0.0.1:8853"),
        ("doh", "127.0.0.1:8443"),
        ("doq", "127.0.0.1:8853"),
    ]
    for config in listeners:
        assert TlsMaterial.from_config(config).current.number == 1
    assert str(pki.ca) in how_to_query(pki)
