"""Certificate → identity: the SPIFFE ID (URI SAN), else the first DNS SAN, else — only where a listener sets
``certificate_cn_identity = true`` — the subject CN.

Called by transports on a certificate that TLS has already verified; this module does not verify anything.
Only a URI SAN yields an identity of the form ``scheme://...``: a DNS SAN or CN containing ``://`` names nothing,
so a CN that reads like a SPIFFE ID can never pass for one (registration authorises SPIFFE IDs only).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID


def identity_from_certificate(der: bytes, cn: bool = False) -> str | None:
    """The identity a verified client certificate proves, or None when it names nothing usable. ``cn``: fall
    back to the subject CN (explicit opt-in; a CN is not checked by most CAs the way a SAN is)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    except ValueError:  # a malformed extension names nothing we can trust
        return None
    if sans is not None:
        # X.509-SVID: exactly one URI SAN, the SPIFFE ID. Other URI SANs are not identities.
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri
        dns_names = [name for name in sans.get_values_for_type(x509.DNSName) if "://" not in name]
        if dns_names:
            return dns_names[0].lower()
    if not cn:
        return None
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if text and "://" not in text:
            return text
    return None


def is_spiffe_id(identity: str | None) -> bool:
    """Whether a certificate identity is a SPIFFE ID, i.e. came from the certificate's URI SAN."""
    return identity is not None and identity.startswith("spiffe://")
