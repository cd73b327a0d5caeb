"""Who is asking, as far as the transport can tell. Filled by transports, read by the identify stage.

Only connection-level facts live here (source address, verified certificate identity): nothing the client
can write into the DNS message itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Transport(enum.StrEnum):
    """A member is its own label (a str): no ``.value`` property lookup on the hot path."""

    UDP = "udp"
    TCP = "tcp"
    DOT = "dot"
    DOH = "doh"
    DOQ = "doq"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    transport: Transport
    address: str  # source IP address as text, no port
    port: int
    # Identity proven by a verified client certificate (SPIFFE ID, DNS SAN, or CN where the listener allows it);
    # None without mTLS.
    certificate_identity: str | None = None
    # Largest response the transport can carry: UDP payload limits are applied by the respond stage.
    stream: bool = False
    # The listener identifies clients by certificate only (client_auth = "optional", no_certificate = "refuse"):
    # without a certificate identity this client is refused, whatever its address.
    certificate_required: bool = False
    # A client id the client *claims* (DoH path /dns-query/ID, DoT/DoQ SNI ID.dns.example): not authentication:
    # anyone who knows an id can send it. Maps the client to an identity only when no certificate did.
    client_id: str | None = None
