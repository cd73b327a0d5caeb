"""The admin API's request and response bodies: one typed model each, from which the OpenAPI document is made."""

from __future__ import annotations

from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from ztdns.config.admin import Role
from ztdns.observe.recent import Record


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Body):
    error: str


class NotAvailable(Body):
    """501: the data source behind this endpoint is not part of this build."""

    error: str = "not available in this build"
    available: bool = False
    reason: str


class ConfigProblem(Body):
    file: str
    line: int | None
    key: str | None
    pointer: str | None = Field(description="JSON pointer into the config's data (RFC 6901)")
    message: str


class ConfigRejected(Body):
    error: str
    problems: list[ConfigProblem]


class ConfigDocument(Body):
    etag: str
    source: str
    toml: str
    data: dict[str, Any]


class ConfigApplied(Body):
    etag: str
    applied: bool
    notes: list[str] = []


class ConfigCheck(Body):
    valid: bool
    problems: list[ConfigProblem]
    diff: str = Field(description="unified diff from the config in service to the text checked")


class ExplainRequest(Body):
    client: str = Field(min_length=1, max_length=512, description="IP address, identity name or certificate identity")
    name: str = Field(min_length=1, max_length=1024)
    type: str = Field(default="A", max_length=16)


class EdeOption(Body):
    code: int
    name: str
    text: str


class ExplainResponse(Body):
    client: str
    identity: str | None
    identity_how: str | None
    question: str | None
    qtype: str | None
    decision: str
    decided_name: str | None
    policy: str | None
    rule: str | None
    origin: str | None
    chain: list[str] = []  # how the decision came about (docs/policy.md, "Precedence")
    detection: list[str] = []  # what the detectors make of the name
    outcome: str
    rcode: str | None
    ede: list[EdeOption]
    response: str | None


class IdentityInfo(Body):
    name: str
    networks: list[str]
    certificates: list[str]
    policies: list[str]


class Identities(Body):
    unknown_clients: dict[str, Any]
    identities: list[IdentityInfo]


class PolicyInfo(Body):
    name: str
    allow: list[Any]
    deny: list[Any]
    exceptions: list[Any] = []  # `except` in the config file: they cancel list denies (docs/policy.md)
    allow_lists: list[str]
    deny_lists: list[str]
    blocked_response: str
    sinkhole: list[str] = []
    block_cname: str | None = None
    include_rule_text: bool
    rewrites: dict[str, str | list[str]] = {}
    schedule: str | None = None
    used_by: list[str]


class Policies(Body):
    policies: list[PolicyInfo]


class Sample(Body):
    name: str
    labels: dict[str, str]
    value: float


class Stats(Body):
    queries_total: int
    by_kind: dict[str, int]
    by_transport: dict[str, int]
    by_rcode: dict[str, int]
    latency_seconds_sum: float
    samples: list[Sample]


class ZoneKeyInfo(Body):
    tag: int
    role: str
    algorithm: int
    state: str
    created: float
    publish: float
    active: float | None
    retire: float | None
    ready: float | None
    ds_seen: float | None
    remove: float | None


class ZoneInfo(Body):
    name: str
    serial: int
    signed: bool
    keys: list[ZoneKeyInfo]
    ds: list[str]


class Zones(Body):
    zones: list[ZoneInfo]


class Attestation(Body):
    available: bool
    report: dict[str, Any] | None
    error: str | None = None


class TokenInfo(Body):
    name: str
    role: Role


class Tokens(Body):
    tokens: list[TokenInfo]


class TokenCreate(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    role: Role
    scrypt: bool = False


class TokenCreated(Body):
    name: str
    role: Role
    token: str = Field(description="shown once; only its hash is stored")
    etag: str


class LoginRequest(Body):
    token: str = Field(min_length=1, max_length=512)


class SessionInfo(Body):
    name: str
    role: Role
    via: str
    csrf: str | None = Field(description="send as X-CSRF-Token with every change made through the session")


class AuditEntries(Body):
    entries: list[dict[str, Any]]


class Unavailable(Body):
    """Why a source has nothing to show (a sink, a section or a control plane not configured, or unreachable)."""

    available: bool
    reason: str | None = None


# The memory sink's record as the API shows it: the same fields (one definition, in observe/recent.py), two with
# a description for the OpenAPI document.
_RECORD_NOTES = {
    "seq": "the paging cursor: ask for older records with before=seq",
    "client": "the client address, or its pseudonym under the sink's privacy",
}
_RECORD_FIELDS: dict[str, Any] = {
    name: (kind, Field(description=_RECORD_NOTES.get(name))) for name, kind in get_type_hints(Record).items()
}
QueryRecord = create_model("QueryRecord", __base__=Body, **_RECORD_FIELDS)


class QueryLog(Unavailable):
    """The memory sink's latest records, newest first (none under privacy ``aggregate``: its windows instead)."""

    privacy: str | None = None
    held: int = 0
    records: list[QueryRecord] = []
    more: bool = False
    windows: list[dict[str, Any]] = Field(default=[], description="privacy aggregate: the windows' counts")


class DetectionInfo(Body):
    detector: str
    key: str = Field(description="what the verdict is about (a keyed hash under privacy pseudonymised)")
    domain: str | None = Field(description="the domain the verdict is about, when it names one")
    action: str
    mode: str
    measured: str | None
    limit: str | None
    until: str | None
    in_force: bool
    first_seen: float
    last_seen: float
    events: int
    text: str | None
    evidence: dict[str, Any] = Field(description="every field of the latest event")


class Detections(Unavailable):
    """Detection verdicts seen by the memory sink, one per detector and key, latest first."""

    privacy: str | None = None
    detections: list[DetectionInfo] = []
    counts: dict[str, int] = Field(default={}, description="events by detector (aggregate windows included)")


class NameCount(Body):
    name: str
    count: int


class Overview(Unavailable):
    """Queries, blocks and detections over time (oldest bucket first) and the most blocked names and identities."""

    privacy: str | None = None
    start: float = 0.0
    bucket_seconds: float = 60.0
    queries: list[int] = []
    blocked: list[int] = []
    detections: list[int] = []
    top_blocked_names: list[NameCount] = []
    top_blocked_identities: list[NameCount] = []


class FleetNodes(Unavailable):
    """The fleet's nodes (agents and resolvers) as they acknowledge bundles in the control plane's bucket."""

    published: dict[str, int] = Field(default={}, description="the published revision per role")
    nodes: list[dict[str, Any]] = []


class Flows(Unavailable):
    """Flow records agents published to the fleet's event stream, newest first."""

    flows: list[dict[str, Any]] = []


class ListUse(Body):
    policy: str
    used_as: str = Field(description="allow or deny")


class ListInfo(Body):
    source: str = Field(description="a file path as the config names it, or a feed URL")
    kind: str = Field(description="file or feed")
    used_by: list[ListUse]
    entries: int | None = None
    copy_time: float | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    failures: int = 0
    skipped: dict[str, int] = {}
    size: int | None = Field(default=None, description="files: bytes")
    modified: float | None = Field(default=None, description="files: last modified")


class Lists(Body):
    lists: list[ListInfo]


class ExceptionRequest(Body):
    """Add an exception for a name, decided like ``explain`` for this client; ``scope`` detect puts the name on
    the detectors' allow-list instead."""

    name: str = Field(min_length=1, max_length=1024)
    client: str = Field(default="", max_length=512)
    type: str = Field(default="A", max_length=16)
    scope: str = Field(default="policy", pattern="^(policy|detect)$")


class ExceptionAdded(ConfigApplied):
    policy: str | None
    added: list[str] = Field(description="the config keys the name was added to")


class ConfigToPublish(Body):
    """202 with ``[control]``: the change passed ``ztdns check``'s checks but is not applied here; the fleet's
    policy changes only as a bundle signed with the operator's key, which no node holds (docs/console.md)."""

    applied: bool = False
    etag: str = Field(description="the ETag the config will have once the published bundle is applied")
    source: str = Field(description="the file name the bundle carries (errors on nodes name it)")
    toml: str = Field(description="the validated config text to publish")
    diff: str = Field(description="unified diff from the config in service")
    publish: str = Field(description="the command that signs and publishes it")
