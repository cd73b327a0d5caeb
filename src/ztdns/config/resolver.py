"""``[resolver]``: where answers come from (forwarding to upstreams, or recursion from the root); docs/forwarding.md,
docs/dnssec.md."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ztdns.config.base import HostPort, Section, parse_hostport

# Port an upstream address without one gets, by transport.
UPSTREAM_PORTS = {"udp": 53, "dot": 853, "doh": 443, "doq": 853}


class UpstreamConfig(Section):
    address: HostPort
    # udp means Do53 (UDP with TCP fallback on TC=1); dot, doh (HTTP/2) and doq are encrypted (docs/forwarding.md).
    transport: Literal["udp", "dot", "doh", "doq"] = "udp"
    # Encrypted transports only. Paths are relative to the config file.
    server_name: str | None = None  # name the upstream's certificate must carry; default: the address
    ca: str | None = None  # CA bundle the upstream's certificate must chain to; default: the system store
    spki_pin: str | None = None  # base64 SHA-256 of the upstream's SubjectPublicKeyInfo (RFC 7858 4.2)
    cert: str | None = None  # our client certificate (mTLS), for upstreams that identify us
    key: str | None = None
    path: str = "/dns-query"  # DoH only

    @field_validator("spki_pin")
    @classmethod
    def _pin(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                digest = base64.b64decode(value, validate=True)
            except binascii.Error:
                digest = b""
            if len(digest) != 32:
                raise ValueError("spki_pin must be the base64 of a SHA-256 digest (44 characters)")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value

    @model_validator(mode="after")
    def _tls(self) -> UpstreamConfig:
        tls_keys = [key for key in ("server_name", "ca", "spki_pin", "cert", "key") if getattr(self, key) is not None]
        if self.transport == "udp" and tls_keys:
            raise ValueError(f"{', '.join(tls_keys)} only apply to encrypted upstreams (dot, doh, doq)")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, UPSTREAM_PORTS[self.transport])


class RecursionConfig(Section):
    """``[resolver.recursion]``: iterative resolution from the root (mode = "recursive"); docs/dnssec.md."""

    root_hints: str | None = None  # zone-format file; None: the built-in IANA hints
    qname_minimisation: bool = True
    aggressive_nsec: bool = True  # RFC 8198: negative answers from cached validated NSEC/NSEC3 (validation on)
    allow_query_localhost: bool = False  # lab and test setups only
    query_port: Annotated[int, Field(ge=1, le=65535)] = 53  # port of every authoritative server (lab use)
    timeout: Annotated[float, Field(gt=0, le=30)] = 1.0  # per upstream query
    total_timeout: Annotated[float, Field(gt=0, le=60)] = 8.0  # per client query
    max_referrals: Annotated[int, Field(ge=1, le=100)] = 30
    max_queries: Annotated[int, Field(ge=1, le=1000)] = 100  # upstream queries per client query
    max_cname_chain: Annotated[int, Field(ge=0, le=32)] = 8
    cache_entries: Annotated[int, Field(ge=0)] = 100_000
    # Glue for name servers outside the referring zone is not trusted: their addresses are looked up (Unbound's
    # harden-glue). Off: such glue is used as given (lab setups only).
    harden_glue: bool = True
    # Answers carry only what the question needs: no NS set of the zone in the authority section (RFC 4472 §4.5).
    minimal_responses: bool = True
    edns_payload: Annotated[int, Field(ge=512, le=4096)] = 1232  # UDP payload size advertised to authoritative servers
    outgoing_addresses: list[str] = []  # local addresses queries leave from (first of each family); empty: any
    ipv4: bool = True  # query authoritative servers over IPv4
    ipv6: bool = True  # ... and over IPv6

    @field_validator("outgoing_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            ipaddress.ip_address(address)  # ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _families(self) -> RecursionConfig:
        if not (self.ipv4 or self.ipv6):
            raise ValueError("ipv4 and ipv6 are both off: no authoritative server could be asked")
        return self


class ResolverConfig(Section):
    mode: Literal["forward", "recursive", "none"] = "forward"
    recursion: RecursionConfig = RecursionConfig()
    upstreams: list[UpstreamConfig] = []
    timeout: Annotated[float, Field(gt=0, le=30)] = 1.5
    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # An upstream is held down after this many consecutive failures, for a backoff that doubles up to 60 s.
    failures_before_down: Annotated[int, Field(ge=1)] = 3
    edns_payload: Annotated[int, Field(ge=512, le=4096)] = 1232
    # Total time one question may spend across all attempts (seconds); each attempt gets min(timeout, what is left).
    budget: Annotated[float, Field(gt=0, le=60)] = 4.0
    # First hold-down of a failing upstream (seconds); it doubles on every further failure up to backoff_max.
    backoff_initial: Annotated[float, Field(gt=0, le=3600)] = 1.0
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Queries with RD=0: "cache-only" answers them from local zones, served zones and the cache only (REFUSED with
    # EDE 20 otherwise, as Unbound); "recurse" resolves them like any other.
    answer_rd0: Literal["cache-only", "recurse"] = "cache-only"

    @model_validator(mode="after")
    def _backoff(self) -> ResolverConfig:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(f"backoff_initial ({self.backoff_initial}) is above backoff_max ({self.backoff_max})")
        return self
