"""Typed configuration: one pydantic model per capability, all under :class:`Config`.

Every key is documented in docs/configuration.md. Models forbid unknown keys so a typo is an error that names
the file, line and key rather than a silently ignored setting.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import dns.rdatatype
from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from ztdns.authority.config import AuthorityConfig
from ztdns.config.base import Section, check_network
from ztdns.config.base import parse_hostport as parse_hostport  # noqa: PLC0414 (re-exported for capabilities)
from ztdns.config.detect import DetectConfig
from ztdns.policy.patterns import PatternError, normalise_name, parse_pattern


def _check_hostport(value: str) -> str:
    parse_hostport(value, 53)  # the default port does not change what is valid
    return value


# "IP:PORT", "[IPv6]:PORT" or a bare IP literal; each model's hostport() supplies its own default port.
HostPort = Annotated[str, AfterValidator(_check_hostport)]


class ServerConfig(Section):
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    state_dir: str = "/var/lib/ztdns"
    drain_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0


class ListenConfig(Section):
    transport: Literal["udp", "tcp", "dot", "doh", "doq"] = "udp"
    address: HostPort = "127.0.0.1:5353"
    idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    max_connections: Annotated[int, Field(ge=1)] = 10_000
    max_pipelined: Annotated[int, Field(ge=1, le=65535)] = 100
    # TLS for dot/doh/doq (docs/transports.md). Paths are relative to the config file.
    cert: str | None = None
    key: str | None = None
    ca: str | None = None  # CA bundle that client certificates must chain to
    client_auth: Literal["require", "optional", "off"] = "off"
    # With client_auth = "optional", a client that shows no certificate is identified by its address
    # ("network") or refused with EDE 18 whatever its address ("refuse").
    no_certificate: Literal["network", "refuse"] = "network"
    crl: list[str] = []
    tls_min_version: Literal["1.2", "1.3"] = "1.3"
    handshake_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Certificate, key, CA and CRL files are re-read when changed: polled this often, and on SIGHUP.
    tls_reload_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0
    path: str = "/dns-query"  # DoH only

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value:
            raise ValueError("path must start with '/' and carry no query string")
        return value

    @model_validator(mode="after")
    def _tls(self) -> ListenConfig:
        if self.no_certificate == "refuse" and self.client_auth != "optional":
            raise ValueError("no_certificate = 'refuse' only applies with client_auth = 'optional'")
        if self.transport in ("udp", "tcp"):
            if self.cert or self.key or self.ca or self.crl or self.client_auth != "off":
                raise ValueError(f"TLS keys (cert, key, ca, crl, client_auth) do not apply to {self.transport}")
            return self
        if not self.cert or not self.key:
            raise ValueError(f"transport {self.transport!r} needs cert and key")
        if self.client_auth != "off" and not self.ca:
            raise ValueError(f"client_auth = {self.client_auth!r} needs ca (the bundle client certificates chain to)")
        return self

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, 53)


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


class DnssecConfig(Section):
    """``[dnssec]``: validation in both forwarding and recursive mode; docs/dnssec.md."""

    validation: bool = True
    trust_anchors: list[str] = []  # files of DS/DNSKEY records; empty: the built-in IANA root KSKs
    negative_trust_anchors: list[str] = []  # names below which nothing is validated
    nsec3_max_iterations: Annotated[int, Field(ge=0, le=2500)] = 50  # RFC 9276: above → insecure


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

    @model_validator(mode="after")
    def _backoff(self) -> ResolverConfig:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(f"backoff_initial ({self.backoff_initial}) is above backoff_max ({self.backoff_max})")
        return self


class CacheConfig(Section):
    max_entries: Annotated[int, Field(ge=0)] = 100_000
    min_ttl: Annotated[int, Field(ge=0)] = 0
    max_ttl: Annotated[int, Field(ge=0)] = 86_400
    negative_max_ttl: Annotated[int, Field(ge=0)] = 3_600
    serve_stale: bool = True
    stale_max_age: Annotated[int, Field(ge=0)] = 86_400
    stale_answer_ttl: Annotated[int, Field(ge=1)] = 30
    prefetch: bool = True
    prefetch_min_hits: Annotated[int, Field(ge=1)] = 3
    prefetch_window: Annotated[float, Field(gt=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _ttls(self) -> CacheConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is above max_ttl ({self.max_ttl})")
        return self


def _qtype(text: str) -> str:
    try:
        dns.rdatatype.from_text(text)
    except Exception:
        raise ValueError(f"{text!r} is not a DNS record type") from None
    return text.upper()


class RuleConfig(Section):
    """A rule written as a table: a pattern limited to some query types."""

    pattern: str
    qtypes: list[str]

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _check_pattern(value)

    @field_validator("qtypes")
    @classmethod
    def _qtypes(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("qtypes must not be empty (leave the rule as a plain string for all types)")
        return [_qtype(v) for v in values]


def _check_pattern(value: str) -> str:
    try:
        parse_pattern(value)
    except PatternError as exc:
        raise ValueError(str(exc)) from None
    return value


def _rule_kind(value: object) -> str:
    return "~table" if isinstance(value, dict | RuleConfig) else "~str"


# A rule is a pattern string, or a table with a pattern and qtypes. Tags starting with '~' are dropped from
# error locations, so errors read 'policies.web.allow[3]'.
Rule = Annotated[
    Annotated[Annotated[str, AfterValidator(_check_pattern)], Tag("~str")] | Annotated[RuleConfig, Tag("~table")],
    Discriminator(_rule_kind),
]


class PolicyConfig(Section):
    allow: list[Rule] = []
    deny: list[Rule] = []
    allow_lists: list[str] = []
    deny_lists: list[str] = []
    blocked_response: Literal["nxdomain", "nodata", "refused"] = "nxdomain"
    include_rule_text: bool = True


def _certificate_pattern(value: str) -> str:
    if not value or value == "*":
        raise ValueError(f"{value!r} matches every certificate; name the identity or a prefix ending in '*'")
    if "*" in value[:-1]:
        raise ValueError(f"{value!r}: '*' may only end a prefix (spiffe://corp.example/ns/prod/*)")
    return value


class IdentityConfig(Section):
    networks: list[Annotated[str, AfterValidator(check_network)]] = []
    # Certificate identities (SPIFFE IDs, DNS SANs, CNs): exact, or a prefix ending in '*'.
    certificates: list[Annotated[str, AfterValidator(_certificate_pattern)]] = []
    policies: Annotated[list[str], Field(min_length=1)]


class UnknownClientsConfig(Section):
    action: Literal["refuse", "identity"] = "refuse"
    identity: str | None = None

    @model_validator(mode="after")
    def _identity(self) -> UnknownClientsConfig:
        if self.action == "identity" and not self.identity:
            raise ValueError("action = 'identity' needs identity = NAME")
        return self


class LocalZoneConfig(Section):
    name: str
    records: list[str] = []
    file: str | None = None

    @model_validator(mode="after")
    def _source(self) -> LocalZoneConfig:
        if self.records and self.file is not None:
            raise ValueError("give the zone's records or its file, not both")
        if not self.records and self.file is None:
            raise ValueError("a local zone needs records or a file (with at least an SOA)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return normalise_name(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None


class QueryLogConfig(Section):
    # "stdout", "off", or a file path.
    output: str = "stdout"
    # Queue depth before lines are dropped (and counted) rather than blocking the event loop.
    queue: Annotated[int, Field(ge=1)] = 65_536


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    query_log: QueryLogConfig = QueryLogConfig()


class MetricsConfig(Section):
    enabled: bool = True
    address: HostPort = "127.0.0.1:9153"

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, 9153)


class Config(Section):
    server: ServerConfig = ServerConfig()
    listen: list[ListenConfig] = [ListenConfig(transport="udp"), ListenConfig(transport="tcp")]
    resolver: ResolverConfig = ResolverConfig()
    cache: CacheConfig = CacheConfig()
    dnssec: DnssecConfig = DnssecConfig()
    identities: dict[str, IdentityConfig] = {}
    unknown_clients: UnknownClientsConfig = UnknownClientsConfig()
    policies: dict[str, PolicyConfig] = {}
    local_zones: list[LocalZoneConfig] = []
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    authority: AuthorityConfig = AuthorityConfig()
    detect: DetectConfig = DetectConfig()

    # Where the file was read from: list files and zone files are relative to it; errors name it. Set by the
    # loader, not keys of the file.
    base_dir: Path = Path(".")
    source: str = "<config>"
    # The TOML text, so that problems found after validation (list files, zones, TLS files) can name a line.
    _text: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name, identity in self.identities.items():
            for index, policy in enumerate(identity.policies):
                if policy not in self.policies:
                    raise _LocatedError(("identities", name, "policies", index), f"unknown policy {policy!r}")
        unknown = self.unknown_clients
        if unknown.action == "identity" and unknown.identity not in self.identities:
            raise _LocatedError(("unknown_clients", "identity"), f"unknown identity {unknown.identity!r}")
        return self

    @model_validator(mode="after")
    def _unambiguous_identities(self) -> Config:
        """The same network or exact certificate identity in two identities would make one of them dead."""
        owners: dict[object, str] = {}
        for name, identity in self.identities.items():
            for key, values in (("networks", identity.networks), ("certificates", identity.certificates)):
                for index, value in enumerate(values):
                    claim = ipaddress.ip_network(value, strict=False) if key == "networks" else value
                    owner = owners.setdefault(claim, name)
                    if owner != name:
                        raise _LocatedError(
                            ("identities", name, key, index), f"{value!r} already belongs to identity {owner!r}"
                        )
        return self

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Config:
        """Two listeners on one socket cannot both bind (DoQ shares UDP with Do53; DoT and DoH share TCP)."""
        sockets: dict[tuple[str, str, int], int] = {}
        for index, listen in enumerate(self.listen):
            protocol = "udp" if listen.transport in ("udp", "doq") else "tcp"
            host, port = listen.hostport()
            first = sockets.setdefault((protocol, str(ipaddress.ip_address(host)), port), index)
            if first != index and port != 0:
                used = f"listen[{first}] ({self.listen[first].transport})"
                message = f"{protocol.upper()} {listen.address} is already used by {used}"
                raise _LocatedError(("listen", index, "address"), message)
        return self

    def text(self) -> str:
        """The TOML text this config was parsed from ("" for configs built in code)."""
        return self._text


class _LocatedError(ValueError):
    """A cross-reference error that knows which key it belongs to (pydantic only knows the model)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
