"""SPKI pins (RFC 7469 style, as RFC 7858 4.2 uses them): the base64 SHA-256 of a certificate's
SubjectPublicKeyInfo, which DoT/DoH upstreams and HTTPS list feeds may be pinned to."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def spki_pin(certificate_der: bytes) -> str:
    public_key = x509.load_der_x509_certificate(certificate_der).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()
