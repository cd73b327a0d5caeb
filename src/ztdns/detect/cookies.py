"""DNS server cookies (RFC 7873, in the RFC 9018 layout): version 1, reserved, a 32-bit timestamp and an 8-byte
hash of the client cookie, those fields and the client address.

The hash is keyed BLAKE2b-64 rather than RFC 9018's SipHash-2-4: the standard library has it in C, and RFC 9018
only needs the same function across the servers of one anycast set, which here is one process. The secret is
random per process (a restart or another worker makes old cookies fail: the client then just gets a new one).
A valid server cookie proves the client sees our answers at its address, so it exempts it from address-based
rate limits (spoofed floods cannot show one).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct

VERSION = 1
LIFETIME = 3600  # seconds a server cookie stays valid (RFC 9018 section 4.3)
CLOCK_SKEW = 300  # a timestamp this far in the future is accepted


class ServerCookies:
    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or os.urandom(16)

    def _hash(self, client: bytes, head: bytes, address: str) -> bytes:
        try:
            packed = ipaddress.ip_address(address.partition("%")[0]).packed
        except ValueError:
            packed = address.encode("utf-8", "replace")
        return hashlib.blake2b(client + head + packed, key=self.secret, digest_size=8).digest()

    def make(self, client: bytes, address: str, now: float) -> bytes:
        """A fresh 16-byte server cookie for this client cookie and address."""
        head = struct.pack("!B3xI", VERSION, int(now) & 0xFFFFFFFF)
        return head + self._hash(client, head, address)

    def valid(self, client: bytes, server: bytes, address: str, now: float) -> bool:
        """Whether ``server`` is a cookie we made for this client cookie and address, and not expired."""
        if len(client) != 8 or len(server) != 16 or server[0] != VERSION:
            return False
        stamp = struct.unpack("!I", server[4:8])[0]
        age = (int(now) - stamp) & 0xFFFFFFFF  # serial-number arithmetic: the counter wraps in 2106
        if age > LIFETIME and (stamp - int(now)) & 0xFFFFFFFF > CLOCK_SKEW:
            return False
        return hmac.compare_digest(server[8:], self._hash(client, server[:8], address))
