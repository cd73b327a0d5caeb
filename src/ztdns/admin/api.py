"""The admin API as a sans-IO function of a request: :meth:`AdminApi.handle` (the HTTPS transport is server.py).

Authentication, in order: a verified client certificate whose identity ``[admin] identities`` maps to a role; a
bearer token (``Authorization: Bearer ztd_...``) whose hash ``[admin] tokens`` holds; a console session cookie
(changes through a session also need its CSRF token in ``X-CSRF-Token``). Every change is audited.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import re
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ValidationError

from ztdns.admin import models, sources
from ztdns.admin.audit import AuditLog
from ztdns.admin.auth import (
    LoginLimiter,
    Principal,
    Sessions,
    allows,
    certificate_principal,
    hash_token,
    new_token,
    token_principal,
)
from ztdns.admin.toml import dumps, merge_patch
from ztdns.config import Config, ConfigError, parse_config
from ztdns.config.admin import AdminTokenConfig, Role
from ztdns.explain import Explained, explain_facts
from ztdns.feeds import FeedManager
from ztdns.handler import Frontend
from ztdns.observe.metrics import MetricsCollector
from ztdns.observe.recent import RecentSink

if TYPE_CHECKING:
    from ztdns.attest.report import Attestor
    from ztdns.authority.daemon import AuthorityService

MAX_BODY = 1 << 20
SESSION_COOKIE = "ztdns_session"
SECURITY_HEADERS = [
    ("content-security-policy", "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
]
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}


class Host(Protocol):
    """What the admin API needs from the server process (``ztdns.daemon.Service``)."""

    config: Config
    config_path: Path | None
    frontend: Frontend
    authority: AuthorityService | None
    attestor: Attestor | None
    feeds: FeedManager

    def verify(self, config: Config) -> None:
        """``ztdns check``'s checks beyond the schema (files the config names). Raises ConfigError."""

    async def apply_config(self, config: Config) -> list[str]:
        """The reload path with a config already read; returns notes. Raises ConfigError, keeping the old."""


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    peer_address: str = ""
    peer_identity: str | None = None  # from a verified client certificate

    @property
    def path(self) -> str:
        return unquote(self.target.partition("?")[0])

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.target.partition("?")[2]).items()}

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(
    status: int, body: BaseModel | dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> Response:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return Response(status, json.dumps(data, indent=1).encode() + b"\n", "application/json", headers or [])


def error(status: int, message: str) -> Response:
    return json_response(status, models.ErrorBody(error=message))


def etag_of(text: str) -> str:
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


_PROBLEM = re.compile(r"^(?P<file>.*?):(?P<line>\d+|\?)?:? (?P<rest>.*)$", re.DOTALL)


def problem(text: str) -> models.ConfigProblem:
    """One ``ztdns check`` line (``file:line: key: message``) as structured data with a JSON pointer."""
    match = _PROBLEM.match(text)
    if match is None:
        return models.ConfigProblem(file="", line=None, key=None, pointer=None, message=text)
    line = match["line"]
    key, sep, message = match["rest"].partition(": ")
    if not sep:
        key, message = "", match["rest"]
    key = key.removesuffix(" (not set in the file: the default)")
    pointer = None
    if key and re.fullmatch(r"[^\s\[\]]+(\[\d+\])*(\.[^\s\[\]]+(\[\d+\])*)*", key):
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
        pointer = "".join(
            "/" + (p[1:-1] if p.startswith("[") else p.replace("~", "~0").replace("/", "~1")) for p in parts
        )
    elif key:
        key, message = "", match["rest"]
    return models.ConfigProblem(
        file=match["file"],
        line=int(line) if line and line != "?" else None,
        key=key or None,
        pointer=pointer,
        message=message,
    )


def rejected(exc: ConfigError, what: str = "config rejected") -> Response:
    return json_response(400, models.ConfigRejected(error=what, problems=[problem(p) for p in exc.problems]))


Handler = Callable[[Request, Principal], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # a trailing "{name}" matches one path segment
    role: Role
    summary: str
    handler: str  # the AdminApi method's name
    request: type[BaseModel] | None = None
    request_type: str = "application/json"
    response: type[BaseModel] = models.ErrorBody
    status: int = 200


ROUTES = [
    Route(
        "GET",
        "/v1/config",
        "viewer",
        "The config in service (TOML text, data, ETag)",
        "get_config",
        response=models.ConfigDocument,
    ),
    Route(
        "PUT",
        "/v1/config",
        "operator",
        "Replace the config (TOML text; If-Match required)",
        "put_config",
        request_type="application/toml",
        response=models.ConfigApplied,
    ),
    Route(
        "PATCH",
        "/v1/config",
        "operator",
        "JSON merge patch on the config's data (If-Match required)",
        "patch_config",
        request_type="application/merge-patch+json",
        response=models.ConfigApplied,
    ),
    Route(
        "POST",
        "/v1/config/check",
        "viewer",
        "Validate TOML text as `ztdns check` does, with a diff",
        "check_config",
        request_type="application/toml",
        response=models.ConfigCheck,
    ),
    Route(
        "POST",
        "/v1/explain",
        "viewer",
        "Why a client gets its answer for a name",
        "explain",
        request=models.ExplainRequest,
        response=models.ExplainResponse,
    ),
    Route(
        "GET",
        "/v1/identities",
        "viewer",
        "Identities and how unknown clients are treated",
        "identities",
        response=models.Identities,
    ),
    Route(
        "GET", "/v1/policies", "viewer", "Policies and the identities using them", "policies", response=models.Policies
    ),
    Route("GET", "/v1/stats", "viewer", "Counters from the metrics", "stats", response=models.Stats),
    Route("GET", "/v1/zones", "viewer", "Served zones: keys, rollover state, DS", "zones", response=models.Zones),
    Route(
        "GET",
        "/v1/attestation",
        "viewer",
        "The attestation report (?nonce=HEX)",
        "attestation",
        response=models.Attestation,
    ),
    Route(
        "GET",
        "/v1/querylog",
        "viewer",
        "Latest queries from the memory sink, newest first (?name=&client=&identity=&decision=&since=&until=&limit="
        "&before=)",
        "querylog",
        response=models.QueryLog,
    ),
    Route(
        "GET",
        "/v1/detections",
        "viewer",
        "Detection verdicts with their evidence, one per detector and key",
        "detections",
        response=models.Detections,
    ),
    Route(
        "GET",
        "/v1/overview",
        "viewer",
        "Queries, blocks and detections over time; top blocked names and identities (?bucket=SECONDS&buckets=N)",
        "overview",
        response=models.Overview,
    ),
    Route("GET", "/v1/lists", "viewer", "List files and feeds: status of each", "lists", response=models.Lists),
    Route(
        "GET",
        "/v1/agents",
        "viewer",
        "The fleet's nodes from the control plane (agents and resolvers, with their revision)",
        "agents",
        response=models.FleetNodes,
    ),
    Route(
        "GET",
        "/v1/flows",
        "viewer",
        "Flow records agents published to the fleet's event stream (?since=SECONDS&limit=N)",
        "flows",
        response=models.Flows,
    ),
    Route(
        "POST",
        "/v1/exceptions",
        "operator",
        "Add an exception for a name (the policy that blocks it, or the detectors' allow-list); applied like PATCH",
        "add_exception",
        request=models.ExceptionRequest,
        response=models.ExceptionAdded,
    ),
    Route(
        "GET",
        "/v1/session",
        "viewer",
        "Who the caller is (and the session's CSRF token)",
        "session",
        response=models.SessionInfo,
    ),
    Route("GET", "/v1/tokens", "admin", "API tokens (names and roles)", "tokens", response=models.Tokens),
    Route(
        "POST",
        "/v1/tokens",
        "admin",
        "Make a token (shown once; its hash goes into the config)",
        "create_token",
        request=models.TokenCreate,
        response=models.TokenCreated,
        status=201,
    ),
    Route(
        "DELETE",
        "/v1/tokens/{name}",
        "admin",
        "Remove a token (its sessions end)",
        "delete_token",
        response=models.ConfigApplied,
    ),
    Route("GET", "/v1/audit", "admin", "The latest audit entries (?limit=N)", "audit", response=models.AuditEntries),
]


def match_route(method: str, path: str) -> tuple[Route | None, str | None, bool]:
    """(route, the {name} segment, whether the path exists with another method)."""
    known = False
    for route in ROUTES:
        if route.path.endswith("{name}"):
            prefix = route.path.removesuffix("{name}")
            if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix:
                continue
            argument: str | None = path[len(prefix) :]
        elif route.path != path:
            continue
        else:
            argument = None
        if route.method == method:
            return route, argument, True
        known = True
    return None, None, known


class AdminApi:
    def __init__(self, host: Host, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        settings = host.config.admin
        self.sessions = Sessions(settings.session_seconds)
        self.limiter = LoginLimiter(settings.login_attempts_per_minute)
        state = host.config.base_dir / host.config.server.state_dir
        self.audit_log = AuditLog(state / settings.audit_log, clock)
        self.changing = asyncio.Lock()  # one config change at a time: the ETag check and the apply are one step
        self.explaining = asyncio.Semaphore(2)  # each explain compiles a runtime: bound the memory and CPU

    # -- dispatch --------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        response = await self._handle(request)
        response.headers += SECURITY_HEADERS
        return response

    async def _handle(self, request: Request) -> Response:
        path = request.path
        if request.method == "GET" and path in ASSETS:
            name, content_type = ASSETS[path]
            return Response(200, resources.files("ztdns.admin").joinpath("console", name).read_bytes(), content_type)
        if path == "/v1/openapi.json" and request.method == "GET":
            from ztdns.admin.openapi import document

            return json_response(200, document())
        refused = cross_site(request)
        if refused is not None:
            return refused
        if path == "/v1/session" and request.method == "POST":
            if _media_type(request) != "application/json":
                return error(415, "send the login as application/json")
            return self.login(request)
        if path == "/v1/session" and request.method == "DELETE":
            return self.logout(request)
        route, argument, known = match_route(request.method, path)
        if route is None:
            return error(405, "method not allowed") if known else error(404, "not found")
        principal = self.authenticate(request)
        if isinstance(principal, Response):
            return principal
        if not allows(principal.role, route.role):
            self.audit_log.write(principal, request.method, path, 403, {"needed": route.role})
            return error(403, f"this needs the {route.role} role (you are {principal.role})")
        if request.method in ("PUT", "PATCH", "POST") and _media_type(request) != route.request_type:
            return error(415, f"send the body as {route.request_type}")
        if route.handler == "delete_token":
            return await self.delete_token(request, principal, argument or "")
        handler: Handler = getattr(self, route.handler)
        try:
            return await handler(request, principal)
        except ValidationError as exc:
            return error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        except ValueError as exc:  # a query parameter that is not a number
            return error(400, str(exc))

    def authenticate(self, request: Request) -> Principal | Response:
        settings = self.host.config.admin
        principal = certificate_principal(settings, request.peer_identity)
        if principal is not None:
            return principal
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            principal = token_principal(settings, authorization[7:].strip())
            if principal is None:
                return error(401, "unknown token")
            return principal
        session_id = request.cookie(SESSION_COOKIE)
        session = self.sessions.get(session_id) if session_id else None
        if session is not None:
            entry = next((t for t in settings.tokens if t.name == session.token_name), None)
            if entry is None:
                self.sessions.drop(session.id)
                return error(401, "the session's token was removed: log in again")
            if request.method not in ("GET", "HEAD") and request.headers.get("x-csrf-token") != session.csrf:
                return error(403, "missing or wrong X-CSRF-Token for this session")
            return Principal(f"token:{entry.name}", entry.role, "session")
        if request.peer_identity is not None:
            return error(403, "this certificate identity has no admin role")
        return error(401, "authenticate with an admin client certificate, a bearer token or a session")

    # -- session ---------------------------------------------------------------------------------------------

    def login(self, request: Request) -> Response:
        if not self.limiter.allow(request.peer_address):
            self.audit_log.write(None, "POST", "/v1/session", 429, {"address": request.peer_address})
            return Response(
                429, b'{"error": "too many login attempts: wait a minute"}\n', headers=[("retry-after", "60")]
            )
        try:
            body = models.LoginRequest.model_validate_json(request.body)
        except ValidationError:
            return error(400, 'send {"token": "..."}')
        principal = token_principal(self.host.config.admin, body.token)
        if principal is None:
            self.audit_log.write(None, "POST", "/v1/session", 401, {"address": request.peer_address})
            return error(401, "unknown token")
        session = self.sessions.create(principal.name.removeprefix("token:"))
        self.audit_log.write(principal, "POST", "/v1/session", 200, {"address": request.peer_address})
        seconds = int(self.sessions.lifetime)
        cookie = f"{SESSION_COOKIE}={session.id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={seconds}"
        info = models.SessionInfo(name=principal.name, role=principal.role, via="session", csrf=session.csrf)
        return json_response(200, info, [("set-cookie", cookie)])

    def logout(self, request: Request) -> Response:
        session_id = request.cookie(SESSION_COOKIE)
        session = self.sessions.get(session_id) if session_id else None
        if session is not None:
            if request.headers.get("x-csrf-token") != session.csrf:
                return error(403, "missing or wrong X-CSRF-Token for this session")
            self.sessions.drop(session.id)
        expired = f"{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
        return Response(204, headers=[("set-cookie", expired)])

    async def session(self, request: Request, principal: Principal) -> Response:
        csrf = None
        if principal.via == "session":
            session = self.sessions.get(request.cookie(SESSION_COOKIE) or "")
            csrf = session.csrf if session else None
        info = models.SessionInfo(name=principal.name, role=principal.role, via=principal.via, csrf=csrf)
        return json_response(200, info)

    # -- config ----------------------------------------------------------------------------------------------

    async def get_config(self, request: Request, principal: Principal) -> Response:
        config = self.host.config
        text = config.text()
        document = models.ConfigDocument(etag=etag_of(text), source=config.source, toml=text, data=tomllib.loads(text))
        return json_response(200, document, [("etag", document.etag)])

    async def check_config(self, request: Request, principal: Principal) -> Response:
        current = self.host.config
        text = _text(request.body)
        diff = "".join(
            difflib.unified_diff(
                current.text().splitlines(keepends=True), text.splitlines(keepends=True), "in service", "checked"
            )
        )
        problems: list[models.ConfigProblem] = []
        try:
            await self._validate(text)
        except ConfigError as exc:
            problems = [problem(p) for p in exc.problems]
        return json_response(200, models.ConfigCheck(valid=not problems, problems=problems, diff=diff))

    async def put_config(self, request: Request, principal: Principal) -> Response:
        return await self._change(request, principal, lambda current: _text(request.body))

    async def patch_config(self, request: Request, principal: Principal) -> Response:
        try:
            patch = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return error(400, "the body is not JSON (a JSON merge patch, RFC 7386)")
        if not isinstance(patch, dict):
            return error(400, "a merge patch on the config is a JSON object")

        def patched(current: str) -> str:
            return dumps(merge_patch(tomllib.loads(current), patch))

        return await self._change(request, principal, patched, {"patch": patch})

    async def _validate(self, text: str) -> Config:
        """Exactly ``ztdns check``: the schema with file:line:key errors, then the files the config names."""
        current = self.host.config
        config = parse_config(text, current.source, current.base_dir)
        await asyncio.get_running_loop().run_in_executor(None, self.host.verify, config)
        return config

    async def _change(
        self,
        request: Request,
        principal: Principal,
        new_text: Callable[[str], str],
        detail: dict[str, Any] | None = None,
        if_match: str | None = None,
    ) -> Response:
        path = self.host.config_path
        if path is None:
            return error(409, "the server runs the built-in default config: there is no file to change")
        if_match = if_match or request.headers.get("if-match")
        if not if_match:
            return error(428, "send If-Match with the ETag of the config you changed (GET /v1/config)")
        async with self.changing:
            current = self.host.config
            old_etag = etag_of(current.text())
            if if_match.removeprefix("W/") != old_etag:
                return json_response(412, {"error": "the config changed since you read it", "etag": old_etag})
            text = new_text(current.text())
            try:
                config = await self._validate(text)
            except ConfigError as exc:
                self.audit_log.write(principal, request.method, request.path, 400, {"problems": exc.problems})
                return rejected(exc)
            if config.admin != current.admin and principal.role != "admin":
                return error(403, "changing [admin] needs the admin role")
            diff = "".join(difflib.unified_diff(current.text().splitlines(True), text.splitlines(True)))
            if current.control is not None:
                return self._to_publish(request, principal, current, text, diff, old_etag, detail)
            # Written first (worker processes reload by reading the file), put back if the reload is rejected.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, write_atomically, path, text)
            try:
                notes = await self.host.apply_config(config)
            except ConfigError as exc:
                await loop.run_in_executor(None, write_atomically, path, current.text())
                self.audit_log.write(principal, request.method, request.path, 400, {"problems": exc.problems})
                return rejected(exc, "reload rejected, still serving the previous config")
            etag = etag_of(text)
            entry = {"etag_before": old_etag, "etag": etag, **(detail or {}), "diff": diff}
            self.audit_log.write(principal, request.method, request.path, 200, entry)
        return json_response(200, models.ConfigApplied(etag=etag, applied=True, notes=notes), [("etag", etag)])

    def _to_publish(
        self,
        request: Request,
        principal: Principal,
        current: Config,
        text: str,
        diff: str,
        old_etag: str,
        detail: dict[str, Any] | None,
    ) -> Response:
        """With ``[control]`` the policy in service is the published bundle's: a change written and applied here
        alone would be replaced by the next bundle, and only the operator's key may sign one (docs/fleet.md). The
        validated text goes back to the caller to publish; nothing is written or applied."""
        source = Path(current.source).name or "ztdns.toml"
        etag = etag_of(text)
        entry = {"etag_before": old_etag, "etag": etag, **(detail or {}), "diff": diff, "published": False}
        self.audit_log.write(principal, request.method, request.path, 202, entry)
        command = f"ztdns control publish --config {source} --key OPERATOR_KEY.pem"
        body = models.ConfigToPublish(etag=etag, source=source, toml=text, diff=diff, publish=command)
        return json_response(202, body)

    # -- reading ---------------------------------------------------------------------------------------------

    async def explain(self, request: Request, principal: Principal) -> Response:
        body = models.ExplainRequest.model_validate_json(request.body)
        try:
            facts = await self._explain(self.host.config, body.client, body.name, body.type)
        except (ValueError, LookupError) as exc:  # a name or type dnspython cannot make a query of
            return error(400, f"cannot ask that: {exc}")
        data = {**facts.__dict__, "ede": [models.EdeOption(code=c, name=n, text=t) for c, n, t in facts.ede]}
        return json_response(200, models.ExplainResponse(**data))

    async def _explain(self, config: Config, client: str, name: str, qtype: str) -> Explained:
        def run() -> Explained:
            # Explain compiles its own runtime (list files can hold millions of names): in a thread with its own
            # loop, so the server's loop keeps answering queries meanwhile.
            return asyncio.run(explain_facts(config, client, name, qtype))

        async with self.explaining:
            return await asyncio.get_running_loop().run_in_executor(None, run)

    async def add_exception(self, request: Request, principal: Principal) -> Response:
        """One click in the console: the name is added where it cancels what blocks it, checked with explain
        against the changed config before anything is applied, then applied as PATCH /v1/config is."""
        body = models.ExceptionRequest.model_validate_json(request.body)
        name = body.name.strip().rstrip(".").lower()
        current = self.host.config
        etag = request.headers.get("if-match") or etag_of(current.text())
        data = tomllib.loads(current.text())
        if body.scope == "detect":
            allow = data.setdefault("detect", {}).setdefault("allow", [])
            if name in allow:
                return error(409, f"{name!r} is on the detectors' allow-list already")
            allow.append(name)
            return await self._apply_exception(request, principal, dumps(data), etag, None, ["detect.allow"], name)
        if not body.client:
            return error(400, "name the client: whether a name is blocked depends on who asks (as in explain)")
        try:
            facts = await self._explain(current, body.client, name, body.type)
        except (ValueError, LookupError) as exc:
            return error(400, f"cannot ask that: {exc}")
        if facts.decision != "deny" or facts.policy is None:
            return error(409, f"{name!r} is not blocked for {body.client!r} (decision {facts.decision})")
        policy = data.get("policies", {}).get(facts.policy)
        if not isinstance(policy, dict):
            return error(409, f"the blocking policy {facts.policy!r} is not in the config file")
        # A default deny needs an allow; a list's deny an exception (and an allow unless one matches already).
        tries = [["allow"]] if facts.rule == "default-deny" else [["except"], ["except", "allow"]]
        for keys in tries:
            candidate = {**data, "policies": {**data["policies"], facts.policy: dict(policy)}}
            changed = candidate["policies"][facts.policy]
            for key in keys:
                changed[key] = [*changed.get(key, []), *([] if name in changed.get(key, []) else [name])]
            text = dumps(candidate)
            try:
                config = await self._validate(text)
                after = await self._explain(config, body.client, name, body.type)
            except ConfigError as exc:
                self.audit_log.write(principal, request.method, request.path, 400, {"problems": exc.problems})
                return rejected(exc, "the exception is not a valid rule")
            if after.decision != "deny":
                added = [f"policies.{facts.policy}.{key}" for key in keys]
                return await self._apply_exception(request, principal, text, etag, facts.policy, added, name)
        chain = "; ".join(facts.chain) or facts.origin or ""
        return error(409, f"an exception cannot cancel what blocks {name!r}: {chain} (edit the policy)")

    async def _apply_exception(
        self,
        request: Request,
        principal: Principal,
        text: str,
        etag: str,
        policy: str | None,
        added: list[str],
        name: str,
    ) -> Response:
        detail = {"exception": name, "added": added}
        response = await self._change(request, principal, lambda current: text, detail, if_match=etag)
        if response.status != 200:
            return response
        applied = models.ConfigApplied.model_validate_json(response.body)
        result = models.ExceptionAdded(**applied.model_dump(), policy=policy, added=added)
        return json_response(200, result, [("etag", applied.etag)])

    async def identities(self, request: Request, principal: Principal) -> Response:
        config = self.host.config
        items = [
            models.IdentityInfo(name=name, networks=i.networks, certificates=i.certificates, policies=i.policies)
            for name, i in config.identities.items()
        ]
        return json_response(
            200, models.Identities(unknown_clients=config.unknown_clients.model_dump(), identities=items)
        )

    async def policies(self, request: Request, principal: Principal) -> Response:
        config = self.host.config
        items = []
        for name, policy in config.policies.items():
            data = policy.model_dump(mode="json")
            used_by = [identity for identity, i in config.identities.items() if name in i.policies]
            items.append(models.PolicyInfo(name=name, used_by=used_by, **data))
        return json_response(200, models.Policies(policies=items))

    async def stats(self, request: Request, principal: Principal) -> Response:
        metrics = self.host.frontend.metrics
        totals = metrics.totals()
        by: list[dict[str, int]] = [{}, {}, {}]  # by transport, kind, rcode
        for key, value in totals.queries.items():
            for part, counts in zip(key, by, strict=True):
                counts[part] = counts.get(part, 0) + value
        samples = [
            models.Sample(name=sample.name, labels=dict(sample.labels), value=sample.value)
            for family in MetricsCollector(lambda: metrics).collect()
            for sample in family.samples
            if not sample.name.endswith("_bucket")
        ]
        stats = models.Stats(
            queries_total=sum(totals.queries.values()),
            by_transport=by[0],
            by_kind=by[1],
            by_rcode=by[2],
            latency_seconds_sum=totals.latency_sum,
            samples=samples,
        )
        return json_response(200, stats)

    async def zones(self, request: Request, principal: Principal) -> Response:
        service = self.host.authority
        zones = []
        now = time.time()
        for origin, served in service.authority.zones.items() if service is not None else ():
            keys, ds = [], []
            manager = served.keys
            for record in manager.records() if manager is not None else ():
                keys.append(
                    models.ZoneKeyInfo(
                        tag=record.tag,
                        role=record.role,
                        algorithm=record.algorithm,
                        state=record.state(now),
                        created=record.created,
                        publish=record.publish,
                        active=record.active,
                        retire=record.retire,
                        ready=record.ready,
                        ds_seen=record.ds_seen,
                        remove=record.remove,
                    )
                )
                if manager is not None and record.role != "zsk" and record.state(now) not in ("removed", "scheduled"):
                    ds.append(f"{origin} IN DS {manager.zone_key(record).ds().to_text()}")
            zones.append(
                models.ZoneInfo(
                    name=str(origin), serial=served.zone.serial, signed=manager is not None, keys=keys, ds=ds
                )
            )
        return json_response(200, models.Zones(zones=zones))

    async def attestation(self, request: Request, principal: Principal) -> Response:
        from ztdns.attest.report import AttestationError, parse_nonce

        attestor = self.host.attestor
        if attestor is None:
            return json_response(200, models.Attestation(available=False, report=None, error="no attestor"))
        try:
            nonce = parse_nonce(request.target.partition("?")[2])
            report = await asyncio.get_running_loop().run_in_executor(None, attestor.report, nonce, b"")
        except AttestationError as exc:
            return json_response(200, models.Attestation(available=False, report=None, error=str(exc)))
        return json_response(200, models.Attestation(available=True, report=report))

    def _recent(self) -> RecentSink | None:
        return self.host.frontend.outputs.recent()

    async def querylog(self, request: Request, principal: Principal) -> Response:
        return json_response(200, sources.query_log(self._recent(), request.query))

    async def detections(self, request: Request, principal: Principal) -> Response:
        return json_response(200, sources.detections(self._recent()))

    async def overview(self, request: Request, principal: Principal) -> Response:
        return json_response(200, sources.overview(self._recent(), request.query))

    async def lists(self, request: Request, principal: Principal) -> Response:
        return json_response(200, sources.lists(self.host.config, self.host.feeds))

    async def agents(self, request: Request, principal: Principal) -> Response:
        return json_response(200, await sources.fleet_nodes(self.host.config))

    async def flows(self, request: Request, principal: Principal) -> Response:
        return json_response(200, await sources.flows(self.host.config, request.query))

    # -- tokens and audit ------------------------------------------------------------------------------------

    async def tokens(self, request: Request, principal: Principal) -> Response:
        items = [models.TokenInfo(name=t.name, role=t.role) for t in self.host.config.admin.tokens]
        return json_response(200, models.Tokens(tokens=items))

    async def create_token(self, request: Request, principal: Principal) -> Response:
        body = models.TokenCreate.model_validate_json(request.body)
        if self.host.config.control is not None:
            return error(
                409,
                "with [control] tokens are part of the published config: make one with `ztdns api token` and "
                "publish its hash line with the fleet's config",
            )
        if any(t.name == body.name for t in self.host.config.admin.tokens):
            return error(409, f"a token named {body.name!r} exists")
        token = new_token()
        entry = AdminTokenConfig(name=body.name, role=body.role, hash=hash_token(token, body.scrypt))
        response = await self._change_tokens(request, principal, lambda ts: [*ts, entry.model_dump()])
        if response.status != 200:
            return response
        etag = json.loads(response.body)["etag"]
        created = models.TokenCreated(name=body.name, role=body.role, token=token, etag=etag)
        return json_response(201, created)

    async def delete_token(self, request: Request, principal: Principal, name: str) -> Response:
        if not any(t.name == name for t in self.host.config.admin.tokens):
            return error(404, f"no token named {name!r}")
        return await self._change_tokens(request, principal, lambda ts: [t for t in ts if t["name"] != name])

    async def _change_tokens(
        self, request: Request, principal: Principal, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> Response:
        def edited(current: str) -> str:
            data = tomllib.loads(current)
            admin = data.setdefault("admin", {})
            admin["tokens"] = change(admin.get("tokens", []))
            return dumps(data)

        etag = etag_of(self.host.config.text())
        name = json.loads(request.body).get("name") if request.body else request.path.rpartition("/")[2]
        return await self._change(
            request, principal, edited, {"token": name}, if_match=request.headers.get("if-match") or etag
        )

    async def audit(self, request: Request, principal: Principal) -> Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 1000))
        except ValueError:
            return error(400, "limit is a number")
        return json_response(200, models.AuditEntries(entries=self.audit_log.tail(limit)))


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def cross_site(request: Request) -> Response | None:
    """Refuse changes a page on another site could make a browser send. Browsers attach client certificates to
    any request (SameSite does not cover them), so beside the session's CSRF token: a foreign ``Origin`` or a
    cross-site ``Sec-Fetch-Site`` is refused, and bodies must have their route's content type, which a
    cross-site form cannot send and a cross-site fetch cannot send without a CORS preflight we never answer."""
    if request.method in ("GET", "HEAD"):
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin != f"https://{request.headers.get('host', '')}":
        return error(403, "cross-origin request refused")
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return error(403, "cross-site request refused")
    return None


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("utf-8", "replace")  # the TOML parser then names the line with the bad bytes


def write_atomically(path: Path, text: str) -> None:
    """Write beside the file and rename over it, keeping its mode: readers see the old or the new file."""
    import os
    import tempfile

    mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
