"""The grant-scope EDNS option (our own, code 65201 from the local/experimental range of RFC 6891 §9): which
ports and protocols an allowed answer's addresses may be reached on.

An enforcement agent that can enforce a scope asks for it by sending the option with no data in its query; the
protective resolver answers it, for a name whose allow rule carries ``ports``, with the option holding one
3-octet entry per (protocol, port): the IP protocol number (6 TCP, 17 UDP) and the port in network order. No
option in the answer (or no data): the grant is not scoped, every port is open, as before. Clients that did not
ask never get it. The agent takes it out of the answer before the application sees it. Documented in
docs/agent.md ("Port- and protocol-scoped grants") and docs/policy.md.
"""

from __future__ import annotations

from collections.abc import Iterable

GRANT_SCOPE = 65201
GRANT_SCOPE_BYTES = GRANT_SCOPE.to_bytes(2, "big")
PROTOCOLS = {"tcp": 6, "udp": 17}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}

# (IP protocol number, port)
PortScope = tuple[tuple[int, int], ...]


def parse_port(text: str) -> tuple[int, int]:
    """``"tcp/443"`` → (6, 443); ValueError naming what is wrong."""
    protocol, slash, port = text.strip().lower().partition("/")
    if not slash or protocol not in PROTOCOLS:
        raise ValueError(f"{text!r}: write a port as 'tcp/443' or 'udp/53'")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1–65535")
    return PROTOCOLS[protocol], int(port)


def port_text(protocol: int, port: int) -> str:
    """(6, 443) → ``"tcp/443"``."""
    return f"{PROTOCOL_NAMES.get(protocol, str(protocol))}/{port}"


def encode_scope(scope: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(bytes((protocol,)) + port.to_bytes(2, "big") for protocol, port in scope)


def decode_scope(data: bytes) -> PortScope:
    """The (protocol, port) entries of an answer's option; ValueError when the data is not whole entries of a
    known protocol and a non-zero port."""
    if len(data) % 3:
        raise ValueError("grant scope: not a whole number of entries")
    scope = []
    for offset in range(0, len(data), 3):
        protocol, port = data[offset], int.from_bytes(data[offset + 1 : offset + 3], "big")
        if protocol not in PROTOCOL_NAMES or not port:
            raise ValueError(f"grant scope: bad entry {data[offset : offset + 3].hex()}")
        scope.append((protocol, port))
    return tuple(scope)
