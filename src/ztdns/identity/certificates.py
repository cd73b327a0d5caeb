"""Certificate → identity: the SPIFFE ID (URI SAN), else the first DNS SAN, else the subject CN.

Called by transports on a certificate that TLS has already verified; this module does not verify anything.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID


def identity_from_certificate(der: bytes) -> str | None:
    """The identity a verified client certificate proves, or None when it names nothing usable."""
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
        dns_names = sans.get_values_for_type(x509.DNSName)
        if dns_names:
            return dns_names[0].lower()
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if text:
            return text
    return None
