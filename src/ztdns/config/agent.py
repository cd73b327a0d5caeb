"""The agent's own configuration file (an endpoint host runs the agent, not the resolver, so it is a separate
file model). Keys are documented in docs/agent.md; errors name file, line and key like ``ztdns check``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ztdns.config import load_model
from ztdns.config.agent_cutoff import CutoffConfig
from ztdns.config.attestation import RequireAttestation
from ztdns.config.base import Section, check_network, parse_hostport
from ztdns.config.control import ControlConfig


def _hostport(value: str, default_port: int) -> str:
    parse_hostport(value, default_port)
    return value


Network = Annotated[str, AfterValidator(check_network)]


class StubConfig(Section):
    """The local stub resolver the host's applications use."""

    listen: list[str] = Field(default_factory=lambda: ["127.0.0.53:53"])
    # Who may ask besides loopback (a stub on a bridge address serves the containers behind it, not the world:
    # its answers carry the host's identity and open the host's egress). Required with a non-loopback listen.
    clients: list[Network] = Field(default_factory=list)
    # Budget for one query across all protective servers (failover included).
    timeout: Annotated[float, Field(gt=0, le=30)] = 3.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("listen must name at least one address")
        return [_hostport(v, 53) for v in values]

    @model_validator(mode="after")
    def _clients(self) -> StubConfig:
        public = [v for v in self.listen if not ipaddress.ip_address(parse_hostport(v, 53)[0]).is_loopback]
        if public and not self.clients:
            raise ValueError(
                f"listen {', '.join(public)} is not a loopback address: set clients to the networks that may ask"
            )
        return self


class ServerConfig(Section):
    """One protective resolver, reached over DoT (RFC 7858) or DoH (RFC 8484, HTTP/2 POST)."""

    # host:port, an IP address (the agent must not need DNS to reach it); port 853 for DoT, 443 for DoH by default.
    address: str
    # The name its certificate must carry; the TLS handshake checks it.
    hostname: str
    transport: Literal["dot", "doh"] = "dot"
    # DoH only: the URL path of the DNS endpoint.
    path: str = "/dns-query"
    # Use this server only while its attestation report verifies against these reference values.
    require_attestation: RequireAttestation | None = None

    @model_validator(mode="after")
    def _attestation_url(self) -> ServerConfig:
        if self.require_attestation is not None and self.transport == "dot" and not self.require_attestation.url:
            raise ValueError("require_attestation of a DoT server needs url (where its DoH report is served)")
        return self

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _hostport(value, 853)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(ch.isspace() for ch in value):
            raise ValueError(f"{value!r} is not a URL path")
        return value

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, 443 if self.transport == "doh" else 853)


class TlsConfig(Section):
    # CA bundle the servers' certificates chain to ("" = the system store).
    ca_file: str = ""
    # The host's client certificate and key for mTLS ("" = no client certificate).
    client_cert: str = ""
    client_key: str = ""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert and client_key go together")
        return self


class AllowConfig(Section):
    """How long an answered address stays open: clamp(TTL, ttl_floor, ttl_ceiling) + grace seconds."""

    ttl_floor: Annotated[int, Field(ge=0)] = 30
    ttl_ceiling: Annotated[int, Field(ge=1)] = 86_400
    grace: Annotated[int, Field(ge=0)] = 60
    # Per queried name; beyond it the least recently answered address of that name is closed (never one of the
    # answer being released, nor one with live connections).
    max_addresses_per_name: Annotated[int, Field(ge=1)] = 256
    # All names together; beyond it the grants closest to their expiry are closed (ztdns_agent_addresses_shed_total).
    max_addresses: Annotated[int, Field(ge=1)] = 1_000_000

    @model_validator(mode="after")
    def _order(self) -> AllowConfig:
        if self.ttl_floor > self.ttl_ceiling:
            raise ValueError(f"ttl_floor ({self.ttl_floor}) is above ttl_ceiling ({self.ttl_ceiling})")
        return self


class FirewallConfig(Section):
    # Also filter forwarded traffic (containers and VMs routed through this host).
    forward: bool = False
    # DHCP client traffic to the broadcast (v4) / All_DHCP_Relay_Agents_and_Servers (v6) addresses.
    dhcp: bool = True
    # Networks on this host's own links: DHCP unicast (renewals) and neighbour discovery to them are accepted
    # too (by default only link-local and link-scope multicast addresses).
    link_networks: list[Network] = Field(default_factory=list)
    # Drop frames that packet sockets (AF_PACKET) send on the host's devices (netdev egress hook, Linux 5.16+).
    packet_egress: bool = True
    # The packet mark bits the stack's own packets carry to that hook (a random value per start); other users
    # of packet marks on this host must keep out of them.
    packet_mark_mask: Annotated[int, Field(ge=1, le=0xFFFFFFFF)] = 0xFFFF0000
    # nftables `log group` the audit records are read from (NFLOG).
    log_group: Annotated[int, Field(ge=0, le=65535)] = 7


Protocol = Literal["tcp", "udp"]
_BOTH: tuple[Protocol, ...] = ("tcp", "udp")


class ExceptionConfig(Section):
    """Networks reachable without a DNS answer (``[[exception]]``)."""

    name: str
    networks: Annotated[list[Network], Field(min_length=1)]
    # Empty = all ports.
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)
    protocols: list[Protocol] = Field(default_factory=lambda: list(_BOTH))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch in "-_." for ch in value):
            raise ValueError(f"{value!r}: use letters, digits, '-', '_' and '.'")
        return value


class WorkloadConfig(Section):
    """A workload on this host with an identity of its own (``[[workload]]``): the processes of one cgroup (a
    systemd unit, a container) ask the protective resolver with its client certificate, and what their answers
    open is open for that cgroup only."""

    name: str
    # The cgroup v2 path below the hierarchy's root, e.g. "system.slice/web.service"; its descendants belong too.
    cgroup: str
    # Label stored with its grants (e.g. its SPIFFE ID; restarts give each grant back to its workload by it).
    identity: Annotated[str, Field(min_length=1)]
    # Its client certificate and key (an X.509 SVID); re-read when the files change on disk.
    client_cert: str
    client_key: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch == "_" for ch in value) or len(value) > 20:
            raise ValueError(f"{value!r}: use up to 20 letters, digits and '_'")
        return value

    @field_validator("cgroup")
    @classmethod
    def _cgroup(cls, value: str) -> str:
        path = value.strip("/")
        if not path or ".." in path.split("/") or '"' in path:
            raise ValueError(f"{value!r} is not a cgroup path below the root")
        return path


class AgentMetricsConfig(Section):
    # "" = no metrics endpoint.
    address: str = "127.0.0.1:9154"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _hostport(value, 9154) if value else value


class AgentConfig(Section):
    mode: Literal["enforce", "audit"] = "enforce"
    # Label recorded with every address this host opened ("" = none); shows in `ztdns agent flows`.
    identity: str = ""
    state_dir: str = "/var/lib/ztdns-agent"
    # Pointed at the stub on start and restored by `ztdns agent uninstall`; "" = leave host DNS config alone.
    resolv_conf: str = "/etc/resolv.conf"
    stub: StubConfig = StubConfig()
    server: list[ServerConfig]
    tls: TlsConfig = TlsConfig()
    allow: AllowConfig = AllowConfig()
    firewall: FirewallConfig = FirewallConfig()
    exception: list[ExceptionConfig] = Field(default_factory=list)
    workload: list[WorkloadConfig] = Field(default_factory=list)
    metrics: AgentMetricsConfig = AgentMetricsConfig()
    cutoff: CutoffConfig = CutoffConfig()  # the optional detection hook (ztdns.agent.cutoff)
    # The fleet's control plane (docs/fleet.md): the agent bundle published there replaces server, allow, firewall
    # and exception; the rest of this file stays the host's own.
    control: ControlConfig | None = None

    base_dir: Path = Path(".")

    @field_validator("workload")
    @classmethod
    def _workloads(cls, values: list[WorkloadConfig]) -> list[WorkloadConfig]:
        names = [w.name for w in values]
        if len(set(names)) != len(names):
            raise ValueError("workload names must differ")
        return values

    @field_validator("server")
    @classmethod
    def _servers(cls, values: list[ServerConfig]) -> list[ServerConfig]:
        if not values:
            raise ValueError("at least one protective server is needed (the agent resolves no other way)")
        return values

    @model_validator(mode="after")
    def _identities(self) -> AgentConfig:
        identities = [self.identity, *(w.identity for w in self.workload)]
        if len(set(identities)) != len(identities):
            raise ValueError("each workload needs an identity of its own, different from the host's `identity`")
        return self

    def path(self, value: str) -> Path:
        """A path from the file, relative to the file's folder."""
        return self.base_dir / value

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)


def load_agent_config(path: str | Path) -> AgentConfig:
    return load_model(AgentConfig, path)
