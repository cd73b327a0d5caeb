"""A small X.509 PKI for people without one: an ECDSA P-256 CA, server and client (SPIFFE) certificates.

Owns: ``ztdns pki init|issue|revoke`` (cli.py) and :func:`ensure_development_pki`, which the server calls on
first run to create certificates in its state directory for the built-in DoT/DoH/DoQ listeners; SPKI pins
(pin.py) for upstreams and list feeds. Config: none
(paths on the command line). Metrics: none. Client data: none (it writes key files, 0600, and certificates).
"""

from ztdns.pki.authority import (
    DevelopmentPki,
    PkiError,
    ensure_development_pki,
    init_ca,
    issue,
    revoke,
)

__all__ = ["DevelopmentPki", "PkiError", "ensure_development_pki", "init_ca", "issue", "revoke"]
