"""``[[listen]]``: the resolver's listeners, one per transport and address, with their TLS; docs/transports.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ztdns.config.base import HostPort, Section, parse_hostport


class ListenConfig(Section):
    transport: Literal["udp", "tcp", "dot", "doh", "doq"] = "udp"
    address: HostPort = "127.0.0.1:5353"
    idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    max_connections: Annotated[int, Field(ge=1)] = 10_000
    max_pipelined: Annotated[int, Field(ge=1, le=65535)] = 100
    # Stream listeners (tcp, dot, doh): what one client may hold (docs/transports.md, "Hostile clients").
    max_connections_per_client: Annotated[int, Field(ge=1)] = 100
    query_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0  # a whole query (or request) after its first byte
    max_buffered_bytes: Annotated[int, Field(ge=65_536)] = 64 * 1024 * 1024  # unread answers, whole listener
    max_pending_body_bytes: Annotated[int, Field(ge=65_536)] = 64 * 1024 * 1024  # unfinished DoH bodies, listener
    # TLS for dot/doh/doq (docs/transports.md). Paths are relative to the config file.
    cert: str | None = None
    key: str | None = None
    ca: str | None = None  # CA bundle that client certificates must chain to
    client_auth: Literal["require", "optional", "off"] = "off"
    # With client_auth = "optional", a client that shows no certificate is identified by its address
    # ("network") or refused with EDE 18 whatever its address ("refuse").
    no_certificate: Literal["network", "refuse"] = "network"
    # A client certificate without a URI SAN or DNS SAN is identified by its subject CN only when this is set.
    certificate_cn_identity: bool = False
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
