"""Identity: which named identity a client is, from facts the transport proved — never from the DNS message.

Owns: mapping a verified certificate identity (exact, or a prefix ending in ``*`` such as
``spiffe://corp.example/ns/prod/*``; longest prefix wins), or else a claimed client id (the DoH path
``/dns-query/ID`` or the DoT/DoQ server name's first label, :mod:`ztdns.identity.sni`: a claim, not authentication),
or else the source address (most specific network wins) to an
identity name from ``[identities.NAME]``, and what happens to clients that match nothing
(``[unknown_clients]``: refuse with EDE 18, or use a default identity). A client without a certificate on a listener
with ``no_certificate = "refuse"`` (``ClientInfo.certificate_required``) is refused, never matched by address.
Client data touched: source address and certificate identity, read only to choose the identity.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ztdns.client import ClientInfo
from ztdns.config import Config


@dataclass(frozen=True, slots=True)
class Match:
    identity: str
    how: str  # "certificate spiffe://…", "network 10.0.0.0/8", "default for unknown clients"


class IdentityMap:
    """Compiled from config once; ``match`` is on the hot path (memoised per address and certificate)."""

    _MEMO_LIMIT = 65_536

    def __init__(self, config: Config) -> None:
        self._exact_certs: dict[str, str] = {}
        self._client_ids = {
            client_id: Match(name, f"client id {client_id} (claimed)")
            for name, identity in config.identities.items()
            for client_id in identity.client_ids
        }
        prefixes: list[tuple[str, str]] = []
        # Per family: prefix lengths present (longest first) and {(length, network int): identity}.
        self._networks: dict[int, tuple[list[int], dict[tuple[int, int], tuple[str, str]]]] = {
            4: ([], {}),
            6: ([], {}),
        }
        for name, identity in config.identities.items():
            for pattern in identity.certificates:
                if pattern.endswith("*"):
                    prefixes.append((pattern[:-1], name))
                else:
                    self._exact_certs[pattern] = name
            for text in identity.networks:
                network = ipaddress.ip_network(text, strict=False)
                lengths, table = self._networks[network.version]
                if network.prefixlen not in lengths:
                    lengths.append(network.prefixlen)
                table.setdefault((network.prefixlen, int(network.network_address)), (name, str(network)))
        for lengths, _ in self._networks.values():
            lengths.sort(reverse=True)
        self._cert_prefixes = sorted(prefixes, key=lambda item: len(item[0]), reverse=True)
        unknown = config.unknown_clients
        self._default = (
            Match(unknown.identity, "default for unknown clients")
            if unknown.action == "identity" and unknown.identity
            else None
        )
        self._by_address: dict[str, Match | None] = {}
        self._by_certificate: dict[str, Match | None] = {}

    def match(self, client: ClientInfo) -> Match | None:
        """The identity for this client, or None when it is unknown and unknown clients are refused — or when it
        showed no certificate on a listener that requires one for identity (the address is not consulted)."""
        certificate = client.certificate_identity
        if certificate is not None:
            try:
                found = self._by_certificate[certificate]
            except KeyError:
                found = self._match_certificate(certificate)
                self._remember(self._by_certificate, certificate, found)
            if found is not None:
                return found
        elif client.certificate_required:
            return None
        if client.client_id is not None:
            claimed = self._client_ids.get(client.client_id)
            if claimed is not None:
                return claimed
        try:
            found = self._by_address[client.address]
        except KeyError:
            found = self._match_address(client.address)
            self._remember(self._by_address, client.address, found)
        return found or self._default

    def _remember(self, memo: dict[str, Match | None], key: str, value: Match | None) -> None:
        if len(memo) >= self._MEMO_LIMIT:
            memo.clear()
        memo[key] = value

    def _match_certificate(self, identity: str) -> Match | None:
        name = self._exact_certs.get(identity)
        if name is not None:
            return Match(name, f"certificate {identity}")
        for prefix, name in self._cert_prefixes:
            if identity.startswith(prefix):
                return Match(name, f"certificate {identity} (matches {prefix}*)")
        return None

    def _match_address(self, text: str) -> Match | None:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        lengths, table = self._networks[address.version]
        bits = address.max_prefixlen
        value = int(address)
        for length in lengths:
            masked = value >> (bits - length) << (bits - length) if length else 0
            hit = table.get((length, masked))
            if hit is not None:
                return Match(hit[0], f"network {hit[1]}")
        return None
