"""``[log]``: the process log level, the query log, and further sinks of query events (``[[log.sinks]]``: JSON
lines, dnstap, syslog; each with its format and privacy mode); docs/configuration.md, docs/observability.md,
docs/privacy.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ztdns.config.base import Section, parse_hostport

Format = Literal["native", "ecs", "ocsf"]
Privacy = Literal["full", "pseudonymised", "aggregate"]


class QueryLogConfig(Section):
    # "stdout", "off", or a file path.
    output: str = "stdout"
    # Queue depth before lines are dropped (and counted) rather than blocking the event loop.
    queue: Annotated[int, Field(ge=1)] = 65_536


class SinkConfig(Section):
    """One sink of query events: where they go, in which format, with what privacy (``memory``: kept in this
    process for the admin API, never written)."""

    type: Literal["json", "dnstap", "syslog", "memory"]
    name: str = ""  # the metric label; defaults to the type and its index
    format: Format = "native"
    privacy: Privacy = "full"
    queue: Annotated[int, Field(ge=1)] = 65_536
    # json: "stdout" or a file path (relative to the config file), reopened on SIGHUP.
    output: str = "stdout"
    # json files: rotated copies beside ``output`` (same name, a suffix) older than this many seconds are deleted;
    # 0 keeps them.
    retention: Annotated[float, Field(ge=0)] = 0.0
    # dnstap: a unix socket path (relative to the config file) or ``address`` (TCP); syslog: ``address``.
    socket: str | None = None
    address: str | None = None
    # dnstap: which messages the sink carries: "client" (CLIENT_QUERY/RESPONSE), "resolver" (RESOLVER_QUERY/RESPONSE:
    # the forwarder's and recursion's exchanges with upstream servers).
    messages: Annotated[list[Literal["client", "resolver"]], Field(min_length=1)] = ["client", "resolver"]
    # syslog: transport, and for TLS the CA that signs the collector's certificate (default: the system's).
    protocol: Literal["udp", "tcp", "tls"] = "udp"
    ca: str | None = None
    server_name: str | None = None  # the name the collector's certificate must carry (default: its host)
    facility: Annotated[int, Field(ge=0, le=23)] = 16  # local0
    # memory: how many query records the ring keeps for the admin API's query log (docs/console.md).
    records: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # pseudonymised: ipcrypt mode for client addresses, and how often the keys are replaced (seconds).
    ipcrypt: Literal["deterministic", "ndx"] = "deterministic"
    key_rotation: Annotated[float, Field(gt=0)] = 86_400.0
    # aggregate: counts per window (seconds); a name is exported only when at least k distinct clients asked.
    window: Annotated[float, Field(gt=0)] = 300.0
    k: Annotated[int, Field(ge=2)] = 5

    @model_validator(mode="after")
    def _consistent(self) -> SinkConfig:
        if self.type == "dnstap":
            if (self.socket is None) == (self.address is None):
                raise ValueError("a dnstap sink needs one of 'socket' (a unix socket path) or 'address' (TCP)")
            if self.privacy == "aggregate":
                raise ValueError("a dnstap sink carries messages: privacy 'aggregate' needs a json or syslog sink")
            if self.privacy == "pseudonymised" and self.ipcrypt == "ndx":
                raise ValueError("dnstap addresses are 16 bytes: use ipcrypt 'deterministic' (ndx makes 32)")
        elif set(self.messages) != {"client", "resolver"}:
            raise ValueError("'messages' applies to dnstap sinks only")
        if self.type == "syslog" and self.address is None:
            raise ValueError("a syslog sink needs 'address' (HOST:PORT of the collector)")
        if self.address is not None:
            parse_hostport(self.address, 0)  # ValueError: not IP:PORT
        return self


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # The instance name every record carries (ECS ``observer.name``, dnstap identity); default: the host name.
    instance: str | None = None
    query_log: QueryLogConfig = QueryLogConfig()
    sinks: list[SinkConfig] = []
