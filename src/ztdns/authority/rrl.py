"""Response rate limiting for UDP (RRL as in BIND and Knot): a token bucket per client prefix *and response
class*, with slip, an exempt list and DNS cookies.

UDP source addresses can be forged, so an authoritative server can be aimed at a victim. The same response
repeated is what an amplification attack needs; a resolver asking for many different names is not one. So the
bucket is per /24 (IPv4) or /56 (IPv6) and per response class: a positive answer or NODATA per (name, type),
NXDOMAIN per zone (a random-subdomain flood shares one bucket), errors (REFUSED, FORMERR, ...) per prefix. Each
gets ``rate`` responses per second with a burst of ``burst``; past that, every ``slip``-th response is sent
truncated (TC=1, no records: a real client retries over TCP, a victim receives a tiny packet) and the rest
dropped. Never limited: TCP (it cannot be spoofed), clients in ``exempt`` networks, and clients showing a valid
server cookie (RFC 7873 §5.3: they have seen our answers at their address; the cookies are the resolver's,
:mod:`ztdns.detect.cookies`, in the RFC 9018 layout).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Verdict(enum.Enum):
    SEND = "send"
    SLIP = "slip"  # send truncated
    DROP = "drop"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    limited: int = 0


class RateLimiter:
    def __init__(
        self,
        rate: float = 20.0,
        burst: float = 40.0,
        slip: int = 2,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 56,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        exempt: Iterable[Network] = (),
    ) -> None:
        self.rate, self.burst, self.slip = rate, burst, slip
        self.exempt = tuple(exempt)
        self.ipv4_prefix, self.ipv6_prefix = ipv4_prefix, ipv6_prefix
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: dict[tuple[int, Hashable], _Bucket] = {}
        self.dropped = 0
        self.slipped = 0

    def _key(self, address: str) -> int:
        ip = ipaddress.ip_address(address)
        if ip.version == 4:
            return int(ip) >> (32 - self.ipv4_prefix)
        # Tagged with a bit above any IPv4 key so the two families never share a bucket.
        return (int(ip) >> (128 - self.ipv6_prefix)) | (1 << 64)

    def exempted(self, address: str) -> bool:
        if not self.exempt:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in self.exempt)

    def check(self, address: str, response_class: Hashable = ()) -> Verdict:
        """The verdict for one more response of ``response_class`` (see the module docstring) to ``address``."""
        if self.exempt and self.exempted(address):
            return Verdict.SEND
        now = self.clock()
        key = (self._key(address), response_class)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                # Forget the oldest bucket: under a spoofed flood of many prefixes we stay bounded.
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return Verdict.SEND
        bucket.limited += 1
        if self.slip and bucket.limited % self.slip == 0:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP
