"""Identity mapping: most specific network wins, certificate identities beat networks, unknown clients."""

from __future__ import annotations

from pathlib import Path

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.identity import IdentityMap

CONFIG = """
[identities.corp]
networks = ["10.0.0.0/8", "2001:db8::/32"]
policies = ["p"]

[identities.lab]
networks = ["10.1.0.0/16"]
policies = ["p"]

[identities.host]
networks = ["10.1.2.3/32"]
policies = ["p"]

[identities.prod]
certificates = ["spiffe://corp.example/ns/prod/*"]
policies = ["p"]

[identities.web]
certificates = ["spiffe://corp.example/ns/prod/sa/web"]
policies = ["p"]

[identities.domain]
certificates = ["spiffe://corp.example/*"]
policies = ["p"]

[policies.p]
allow = ["**"]
"""


def identities(extra: str = "") -> IdentityMap:
    return IdentityMap(parse_config(CONFIG + extra, "t.toml", Path(".")))


def who(mapping: IdentityMap, address: str, certificate: str | None = None) -> str | None:
    match = mapping.match(ClientInfo(Transport.DOT, address, 1, certificate_identity=certificate))
    return None if match is None else match.identity


def test_most_specific_network_wins() -> None:
    mapping = identities()
    assert who(mapping, "10.9.9.9") == "corp"
    assert who(mapping, "10.1.9.9") == "lab"
    assert who(mapping, "10.1.2.3") == "host"
    assert who(mapping, "2001:db8::1") == "corp"
    assert who(mapping, "::ffff:10.1.2.3") == "host"  # v4-mapped addresses are their IPv4 selves
    assert who(mapping, "192.0.2.1") is None


def test_certificate_exact_beats_prefix_and_longest_prefix_wins() -> None:
    mapping = identities()
    assert who(mapping, "10.9.9.9", "spiffe://corp.example/ns/prod/sa/web") == "web"
    assert who(mapping, "10.9.9.9", "spiffe://corp.example/ns/prod/sa/api") == "prod"
    assert who(mapping, "10.9.9.9", "spiffe://corp.example/ns/dev/sa/api") == "domain"
    # A certificate that matches nothing falls back to the network.
    assert who(mapping, "10.9.9.9", "spiffe://other.example/x") == "corp"


def test_unknown_clients_default_identity() -> None:
    mapping = identities('\n[unknown_clients]\naction = "identity"\nidentity = "lab"\n')
    match = mapping.match(ClientInfo(Transport.UDP, "192.0.2.1", 1))
    assert match is not None and match.identity == "lab" and "unknown" in match.how
