"""``[resolver]``: where answers come from (forwarding to upstreams, or recursion from the root); docs/forwarding.md,
docs/dnssec.md."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ztdns.config.base import Section, parse_hostport
from ztdns.patterns import PatternError, normalise_name


def _bootstrap_address(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError names the bad one
    return value


# Port an upstream address without one gets, by transport.
UPSTREAM_PORTS = {"udp": 53, "dot": 853, "doh": 443, "doq": 853}


def _upstream_address(value: str) -> str:
    """An IP literal with an optional port, or a host name with an optional port (then ``bootstrap`` is needed)."""
    try:
        parse_hostport(value, 53)
        return value
    except ValueError:
        pass
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        normalise_name(host)
    except PatternError:
        raise ValueError(f"{value!r} is neither an IP address nor a host name (with an optional :PORT)") from None
    if port and not (port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"{value!r}: port out of range")
    return value


def _is_ip(text: str) -> bool:
    try:
        parse_hostport(text, 53)
    except ValueError:
        return False
    return True


class UpstreamConfig(Section):
    # An IP literal ("192.0.2.53", "[2001:db8::53]:853"), or a host name ("dns.quad9.net") with `bootstrap`.
    address: Annotated[str, AfterValidator(_upstream_address)]
    # The addresses of a named upstream (no DNS lookup is made for it): one upstream per address, each checked
    # against the name (server_name defaults to it).
    bootstrap: list[Annotated[str, AfterValidator(_bootstrap_address)]] = []
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
    def _bootstrap(self) -> UpstreamConfig:
        named = not _is_ip(self.address)
        if named and not self.bootstrap:
            raise ValueError(f'{self.address!r} is a name: give its addresses in bootstrap = ["IP", ...]')
        if not named and self.bootstrap:
            raise ValueError("bootstrap only applies to upstreams given by name")
        return self

    def by_address(self) -> list[UpstreamConfig]:
        """This upstream, or for a named one, one upstream per bootstrap address (certificates checked against
        the name)."""
        if not self.bootstrap:
            return [self]
        host, _, port = self.address.rpartition(":") if self.address.count(":") == 1 else (self.address, "", "")
        server_name = self.server_name or (None if self.transport == "udp" else normalise_name(host))
        return [
            self.model_copy(
                update={
                    "address": f"[{ip}]:{port}" if port and ":" in ip else f"{ip}:{port}" if port else ip,
                    "bootstrap": [],
                    "server_name": server_name,
                }
            )
            for ip in self.bootstrap
        ]

    @model_validator(mode="after")
    def _tls(self) -> UpstreamConfig:
        tls_keys = [key for key in ("server_name", "ca", "spki_pin", "cert", "key") if getattr(self, key) is not None]
        if self.transport == "udp" and tls_keys:
            raise ValueError(f"{', '.join(tls_keys)} only apply to encrypted upstreams (dot, doh, doq)")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    def hostport(self) -> tuple[str, int]:
        if self.bootstrap:  # a named upstream: its first address (Forwarders get the expanded list)
            return self.by_address()[0].hostport()
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


class ForwardZoneConfig(Section):
    """``[[resolver.forward_zones]]``: names at and below ``zone`` go to these upstreams (docs/forwarding.md)."""

    zone: str
    upstreams: Annotated[list[UpstreamConfig], Field(min_length=1)]
    # "validate": as [dnssec] says; "insecure" (also "negative-trust-anchor", RFC 7646): never validated, AD cleared.
    dnssec: Literal["validate", "insecure", "negative-trust-anchor"] = "validate"
    cache_max_ttl: Annotated[int, Field(ge=0)] | None = None  # cap of the TTLs of this zone's answers

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            return normalise_name(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None


class ResolverConfig(Section):
    mode: Literal["forward", "recursive", "none"] = "forward"
    recursion: RecursionConfig = RecursionConfig()
    upstreams: list[UpstreamConfig] = []
    forward_zones: list[ForwardZoneConfig] = []
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

    def with_bootstrap(self) -> ResolverConfig:
        """The same settings with named upstreams expanded to one upstream per bootstrap address."""
        upstreams = [one for upstream in self.upstreams for one in upstream.by_address()]
        return self.model_copy(update={"upstreams": upstreams})

    @model_validator(mode="after")
    def _distinct_zones(self) -> ResolverConfig:
        seen: set[str] = set()
        for zone in self.forward_zones:
            if zone.zone in seen:
                raise ValueError(f"forward zone {zone.zone or '.'!r} is listed twice")
            seen.add(zone.zone)
        return self

    @model_validator(mode="after")
    def _backoff(self) -> ResolverConfig:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(f"backoff_initial ({self.backoff_initial}) is above backoff_max ({self.backoff_max})")
        return self
