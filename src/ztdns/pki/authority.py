"""CA operations on a directory: DIR/ca.crt, DIR/ca.key, DIR/NAME.crt, DIR/NAME.key, DIR/crl.pem."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Usage = Literal["server", "client", "both"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL = "crl.pem"
# Development PKI: what the built-in listeners and the printed kdig/curl examples use.
DEV_SUBDIR = "pki"
DEV_SERVER = "server"
DEV_CLIENT = "client"
DEV_CLIENT_SPIFFE_ID = "spiffe://ztdns.test/dev/client"


class PkiError(Exception):
    """A PKI operation could not be done (missing CA, existing file, bad name); the message says why."""


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA keys only sign: handshakes, and for the CA also certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only, never world-readable even for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    # Write beside and rename, so a server polling the file never reads half a certificate.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise PkiError(f"{directory}: no CA here (run `ztdns pki init {directory}` first)")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: not an EC private key")
    return cert, key


def init_ca(directory: Path, common_name: str = "ztdns CA", days: int = 3650) -> Path:
    """Create an ECDSA P-256 CA in DIRECTORY (never overwriting one). Returns the CA certificate path."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise PkiError(f"{directory / CA_KEY} exists; refusing to replace a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name in {"ca", "crl"}:
        raise PkiError(f"{name!r} is not a usable certificate name (a plain file name other than ca/crl)")


def issue(
    directory: Path,
    name: str,
    *,
    spiffe_id: str | None = None,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    days: int = 90,
    usage: Usage = "server",
    not_before: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue DIRECTORY/NAME.crt and NAME.key (0600), signed by the CA in DIRECTORY. Returns both paths.

    ``not_before`` moves the validity window (tests use it to make expired certificates).
    """
    _check_name(name)
    ca_cert, ca_key = _load_ca(directory)
    if spiffe_id is not None and not spiffe_id.startswith("spiffe://"):
        raise PkiError(f"{spiffe_id!r} is not a SPIFFE ID (spiffe://trust-domain/path)")
    sans: list[x509.GeneralName] = []
    if spiffe_id is not None:
        sans.append(x509.UniformResourceIdentifier(spiffe_id))
    sans += [x509.DNSName(dns_name) for dns_name in dns_names]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    except ValueError as exc:
        raise PkiError(str(exc)) from None
    common_name = dns_names[0] if dns_names else (spiffe_id or name)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    purposes = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[usage]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        # SPIFFE X.509-SVID: the URI SAN identifies the workload; the SAN extension is critical when the
        # subject carries no identity of its own, but we always set a CN, so non-critical is correct.
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def revoke(directory: Path, name: str, days: int = 7) -> Path:
    """Add DIRECTORY/NAME.crt to DIRECTORY/crl.pem (creating it) and re-sign the CRL. Returns the CRL path."""
    _check_name(name)
    ca_cert, ca_key = _load_ca(directory)
    cert_path = directory / f"{name}.crt"
    if not cert_path.exists():
        raise PkiError(f"{cert_path}: no such certificate")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    crl_path = directory / CRL
    revoked = list(x509.load_pem_x509_crl(crl_path.read_bytes())) if crl_path.exists() else []
    now = _now()
    if all(entry.serial_number != cert.serial_number for entry in revoked):
        revoked.append(x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build())
    return _write_crl(directory, ca_cert=ca_cert, ca_key=ca_key, revoked=revoked, now=now, days=days)


def _write_crl(
    directory: Path,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: list[x509.RevokedCertificate],
    now: datetime.datetime,
    days: int,
) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=days))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    path = directory / CRL
    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class DevelopmentPki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_identity: str = DEV_CLIENT_SPIFFE_ID


def ensure_development_pki(state_dir: Path) -> DevelopmentPki:
    """Create (once) STATE_DIR/pki: a CA, a server certificate for localhost/127.0.0.1/::1 and a client
    certificate carrying a SPIFFE ID. Later calls reuse what exists, re-issuing missing or expiring files."""
    directory = state_dir / DEV_SUBDIR
    if not (directory / CA_KEY).exists():
        init_ca(directory, common_name="ztdns development CA")
    server_cert, server_key = directory / f"{DEV_SERVER}.crt", directory / f"{DEV_SERVER}.key"
    if _needs_issue(server_cert, server_key):
        issue(directory, DEV_SERVER, dns_names=("localhost",), ip_addresses=("127.0.0.1", "::1"), usage="server")
    client_cert, client_key = directory / f"{DEV_CLIENT}.crt", directory / f"{DEV_CLIENT}.key"
    if _needs_issue(client_cert, client_key):
        issue(directory, DEV_CLIENT, spiffe_id=DEV_CLIENT_SPIFFE_ID, usage="client")
    return DevelopmentPki(directory, directory / CA_CERT, server_cert, server_key, client_cert, client_key)


def _needs_issue(cert_path: Path, key_path: Path) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return True
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc < _now() + datetime.timedelta(days=1)
