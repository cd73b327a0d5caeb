"""The encrypted listeners of the built-in default config: DoT, DoH, DoQ on loopback, development PKI."""

from __future__ import annotations

from pathlib import Path

from ztdns.config.listen import ListenConfig
from ztdns.pki import DevelopmentPki, ensure_development_pki

DOT_ADDRESS = "127.0.0.1:8853"
DOH_ADDRESS = "127.0.0.1:8443"
DOQ_ADDRESS = "127.0.0.1:8853"  # UDP: no clash with DoT on TCP


def development_listeners(state_dir: Path) -> tuple[list[ListenConfig], DevelopmentPki]:
    """Create STATE_DIR/pki once and return DoT/DoH/DoQ listener configs that use it. Client certificates
    are optional: with the development client certificate the identity is its SPIFFE ID."""
    pki = ensure_development_pki(state_dir)
    common = {
        "cert": str(pki.server_cert),
        "key": str(pki.server_key),
        "ca": str(pki.ca),
        "client_auth": "optional",
    }
    listeners = [
        ListenConfig.model_validate({"transport": transport, "address": address, **common})
        for transport, address in (("dot", DOT_ADDRESS), ("doh", DOH_ADDRESS), ("doq", DOQ_ADDRESS))
    ]
    return listeners, pki


def how_to_query(pki: DevelopmentPki) -> str:
    """The lines ``ztdns serve`` prints so a first-time user can try every encrypted transport."""
    cert = f"+tls-certfile={pki.client_cert} +tls-keyfile={pki.client_key}"
    host, port = DOT_ADDRESS.split(":")
    return "\n".join(
        [
            f"DoT:  kdig @{host} -p {port} +tls +tls-ca={pki.ca} +tls-hostname=localhost www.ztdns.test",
            f"      with identity {pki.client_identity}: add {cert}",
            f"DoH:  kdig @{host} -p {DOH_ADDRESS.split(':')[1]} +https +tls-ca={pki.ca} "
            "+tls-hostname=localhost www.ztdns.test",
            f"      curl --cacert {pki.ca} --doh-url https://localhost:{DOH_ADDRESS.split(':')[1]}/dns-query "
            "https://www.ztdns.test/",
            f"DoQ:  kdig @{host} -p {DOQ_ADDRESS.split(':')[1]} +quic +tls-ca={pki.ca} "
            "+tls-hostname=localhost www.ztdns.test  (kdig built with QUIC support)",
        ]
    )
