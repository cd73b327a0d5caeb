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
    """The lines ``ztdns serve`` prints so a first-time user can try every transport, with and without the
    development client certificate (which makes the client the identity ``dev-client``: see defaults.py)."""
    cert = f"+tls-certfile={pki.client_cert} +tls-keyfile={pki.client_key}"
    host, port = DOT_ADDRESS.split(":")
    doh_port = DOH_ADDRESS.split(":")[1]
    return "\n".join(
        [
            f"Do53: kdig @{host} -p 5353 www.ztdns.test",
            f"DoT:  kdig @{host} -p {port} +tls +tls-ca={pki.ca} +tls-hostname=localhost www.ztdns.test",
            f"      as identity dev-client ({pki.client_identity}), which may also resolve workload.ztdns.test:",
            f"      kdig @{host} -p {port} +tls +tls-ca={pki.ca} +tls-hostname=localhost {cert} workload.ztdns.test",
            f"DoH:  kdig @{host} -p {doh_port} +https +tls-ca={pki.ca} +tls-hostname=localhost www.ztdns.test",
            f"      curl --cacert {pki.ca} --doh-url https://localhost:{doh_port}/dns-query https://www.ztdns.test/",
            # Debian 12's kdig 3.2.6 crashes when +quic is combined with +tls-ca/+tls-hostname: plain +quic (no
            # certificate check) is what works there.
            f"DoQ:  kdig @{host} -p {DOQ_ADDRESS.split(':')[1]} +quic www.ztdns.test",
        ]
    )
