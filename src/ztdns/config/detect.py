"""``[detect]``: threat detection (tunnelling, DGA, random-subdomain floods, rate limits); docs/detect.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ztdns.config.base import Section


def _allow_entry(value: str) -> str:
    name = value.strip().strip(".")
    try:
        name.encode("idna")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a domain name") from None
    if not name or "*" in name or " " in name:
        raise ValueError(f"{value!r}: write a suffix such as 'avqs.mcafee.com' (it covers every name below it)")
    return value


Mode = Literal["off", "observe", "enforce"]
# What an enforced verdict does to the matching queries (docs/detect.md, "Actions").
Action = Literal["log", "refuse", "nxdomain"]


class TunnelConfig(Section):
    """Information carried in query names per identity (or client prefix) × registered domain."""

    mode: Mode | None = None  # None: the section's mode
    action: Action = "nxdomain"
    # Bytes per second carried in the labels below the registered domain, over `window` seconds.
    limit_bytes_per_second: Annotated[float, Field(gt=0)] = 50.0
    # A fast tunnel is flagged on a short window too (the 10 s requirement at >= 1 kB/s).
    fast_bytes_per_second: Annotated[float, Field(gt=0)] = 1000.0
    window: Annotated[float, Field(ge=5, le=3600)] = 60.0
    fast_window: Annotated[float, Field(ge=1, le=60)] = 5.0
    # Names under a domain must be mostly unique for it to count as a channel (ratio of distinct names).
    min_unique_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    min_queries: Annotated[int, Field(ge=1)] = 20
    block_seconds: Annotated[float, Field(gt=0)] = 600.0


class DgaConfig(Section):
    """Names that fail (NXDOMAIN) scored by the shipped lexical model; a verdict after N in a window."""

    mode: Mode | None = None
    action: Action = "refuse"
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.93  # model score from which a failing name is suspicious
    min_names: Annotated[int, Field(ge=1)] = 10  # suspicious names in the window before a client verdict
    window: Annotated[float, Field(ge=1, le=3600)] = 60.0
    block_seconds: Annotated[float, Field(gt=0)] = 600.0


class FloodConfig(Section):
    """Random-subdomain ("water torture") floods per zone; gates as PowerDNS Defender's."""

    mode: Mode | None = None
    window: Annotated[float, Field(ge=1, le=600)] = 5.0
    min_queries_per_second: Annotated[float, Field(ge=0)] = 100.0
    min_children: Annotated[int, Field(ge=0)] = 50  # distinct names under the zone in the window
    min_failure_ratio: Annotated[float, Field(ge=0, le=1)] = 0.8  # NXDOMAIN + SERVFAIL among answers
    max_cache_hit_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Mitigation: upstream fetches per second for the zone while flagged; the rest are SERVFAIL (or served stale).
    upstream_quota: Annotated[float, Field(ge=0)] = 20.0
    # After the flood has lasted this long, the zone's suffix is blocked outright (0: never).
    block_after: Annotated[float, Field(ge=0)] = 60.0
    block_seconds: Annotated[float, Field(gt=0)] = 60.0
    hold_seconds: Annotated[float, Field(gt=0)] = 30.0  # how long a flagged zone stays flagged after the last tick


class RateLimitConfig(Section):
    """Token buckets per identity and per client prefix (several lengths at once)."""

    mode: Mode | None = None
    per_identity: Annotated[float, Field(ge=0)] = 0.0  # queries per second; 0: no identity limit
    per_prefix: Annotated[float, Field(ge=0)] = 200.0  # queries per second per /32 and /128
    # Each wider prefix gets this multiple of the narrower one's rate (/24 → 4x, /64 → 4x, /56 → 16x).
    prefix_multiplier: Annotated[float, Field(ge=1)] = 4.0
    ipv4_prefixes: list[Annotated[int, Field(ge=8, le=32)]] = [32, 24]
    ipv6_prefixes: list[Annotated[int, Field(ge=16, le=128)]] = [128, 64, 56]
    burst_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0  # bucket depth, in seconds of rate
    slip: Annotated[int, Field(ge=0, le=10)] = 2  # UDP: every Nth limited query gets TC=1, the rest dropped (0: drop)
    # With the limits in enforce: answer DNS cookies (RFC 7873); a valid server cookie (or a verified client
    # certificate) exempts from address-based limits. Answers carrying a server cookie are never replayed.
    cookies: bool = True


class DetectConfig(Section):
    mode: Mode = "observe"
    max_keys: Annotated[int, Field(ge=16)] = 50_000  # tracked identity×domain and prefix×domain keys
    max_zones: Annotated[int, Field(ge=16)] = 10_000  # tracked zones for the flood detector
    tick_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Registered domains below which random names are normal (antivirus look-ups, DNSBLs, CDNs, telemetry);
    # added to the shipped list (src/ztdns/data/detect-allow.txt) unless `builtin_allow` is false.
    allow: list[Annotated[str, AfterValidator(_allow_entry)]] = []
    builtin_allow: bool = True
    # A log line (security event) per verdict key at most this often.
    log_interval: Annotated[float, Field(gt=0)] = 1.0
    tunnel: TunnelConfig = TunnelConfig()
    dga: DgaConfig = DgaConfig()
    flood: FloodConfig = FloodConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()

    def mode_of(self, detector: Literal["tunnel", "dga", "flood", "rate_limit"]) -> Mode:
        own: Mode | None = getattr(self, detector).mode
        if self.mode == "off":
            return "off"
        return self.mode if own is None else own
