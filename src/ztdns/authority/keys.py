"""Zone signing keys: the private half lives in a file (PEM, 0600) or in a PKCS#11 token; both sign bytes.

A key's signer object is built once (the loaded private key, or a cached PKCS#11 handle), so signing an RRset
costs one private-key operation and nothing else. A key whose file is missing is an error, never regenerated:
a silently new key would break the chain of trust that the parent's DS records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dns.dnssec
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CDNSKEY
import dns.rdtypes.ANY.DNSKEY
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ECDSAP256SHA256 = int(dns.dnssec.Algorithm.ECDSAP256SHA256)  # type: ignore[attr-defined]
ED25519 = int(dns.dnssec.Algorithm.ED25519)  # type: ignore[attr-defined]
ALGORITHMS = {"ecdsap256sha256": ECDSAP256SHA256, "ed25519": ED25519}

ZONE_FLAG = 0x0100
SEP_FLAG = 0x0001


class KeyStoreError(Exception):
    """A key cannot be created, found or used (missing file, unsupported algorithm, token error)."""


class PrivateKey(Protocol):
    """The private half of one zone key, wherever it lives."""

    algorithm: int

    def sign(self, data: bytes) -> bytes:
        """The DNSSEC signature field (RFC 6605 r||s for ECDSA, RFC 8080 raw for Ed25519) over ``data``."""

    def public_key(self) -> bytes:
        """The DNSKEY public key field."""


class FileKey:
    """A private key held in process memory, loaded from (or written to) a PEM file."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = ED25519
            self.sign = key.sign  # type: ignore[method-assign]
        else:
            if not isinstance(key.curve, ec.SECP256R1):
                raise KeyStoreError(f"unsupported curve {key.curve.name}")
            self.algorithm = ECDSAP256SHA256
            self._ecdsa = ec.ECDSA(hashes.SHA256())

    def sign(self, data: bytes) -> bytes:
        # Only reached for ECDSA: Ed25519 binds key.sign directly in __init__.
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(self._key.sign(data, self._ecdsa))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_key(self) -> bytes:
        public = self._key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        numbers = public.public_numbers()
        return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")

    @classmethod
    def generate(cls, algorithm: int) -> FileKey:
        if algorithm == ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm == ECDSAP256SHA256:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        raise KeyStoreError(f"unsupported algorithm {algorithm}")

    @classmethod
    def load(cls, path: Path) -> FileKey:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key file {path} is missing; refusing to generate a replacement") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key file {path}: {exc}") from None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise KeyStoreError(f"{path}: not an ECDSA or Ed25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: never overwrite an existing key; 0600 from creation, not chmod afterwards.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """A key ready to sign for one zone: its DNSKEY record, key tag and private half."""

    zone: dns.name.Name
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY
    tag: int
    private: PrivateKey

    @classmethod
    def make(cls, zone: dns.name.Name, private: PrivateKey, sep: bool) -> ZoneKey:
        flags = ZONE_FLAG | (SEP_FLAG if sep else 0)
        dnskey = dns.rdtypes.ANY.DNSKEY.DNSKEY(
            dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, 3, private.algorithm, private.public_key()
        )
        return cls(zone, dnskey, dns.dnssec.key_id(dnskey), private)

    def ds(self, digest: str = "SHA256") -> dns.rdata.Rdata:
        return dns.dnssec.make_ds(self.zone, self.dnskey, digest)

    def matches_ds(self, ds: dns.rdata.Rdata) -> bool:
        """Whether a DS record (as a parent serves it) is this key's, by any digest type we can compute."""
        if ds.key_tag != self.tag or ds.algorithm != self.dnskey.algorithm:  # type: ignore[attr-defined]
            return False
        try:
            ours = dns.dnssec.make_ds(self.zone, self.dnskey, ds.digest_type)  # type: ignore[attr-defined]
        except (dns.exception.DNSException, ValueError):  # a digest type we do not know
            return False
        return bool(ours == ds)

    def cds(self, digest: str = "SHA256") -> dns.rdata.Rdata:
        return dns.dnssec.make_cds(self.zone, self.dnskey, digest)

    def cdnskey(self) -> dns.rdata.Rdata:
        key = self.dnskey
        return dns.rdtypes.ANY.CDNSKEY.CDNSKEY(
            key.rdclass, dns.rdatatype.CDNSKEY, key.flags, key.protocol, key.algorithm, key.key
        )
