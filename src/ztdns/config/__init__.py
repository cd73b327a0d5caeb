"""Configuration: the one schema package. The root :class:`Config` and loading with file:line:key errors are here;
one module per area holds that area's models (``listen.py``, ``identity.py``, ``policy.py``, ``lists.py``,
``resolver.py``, ``cache.py``, ``control.py``, ``dnssec.py``, ``local_zones.py``, ``log.py``, ``metrics.py``,
``server.py``, ``authority.py``, ``admin.py``, and ``agent.py`` for the agent's own file); ``base.py`` holds what
areas share and ``locate.py`` maps keys to lines.

This package sits at the bottom of the layers: it imports no capability package, so any capability may import
its area's models. A new area is a new module here and one field of :class:`Config` (CONTRIBUTING.md).

``load_config(path)`` returns a validated :class:`Config` or raises :class:`ConfigError`, whose lines read
``examples/bad.toml:12: policies.web.allow[3]: '*.*.x' is not a valid pattern``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, PrivateAttr, ValidationError, model_validator

from ztdns.config.admin import AdminConfig
from ztdns.config.attestation import AttestationConfig
from ztdns.config.authority import AuthorityConfig
from ztdns.config.base import LocatedError, Section
from ztdns.config.cache import CacheConfig
from ztdns.config.control import ControlConfig
from ztdns.config.detect import DetectConfig
from ztdns.config.dnssec import DnssecConfig
from ztdns.config.identity import IdentityConfig, UnknownClientsConfig
from ztdns.config.listen import ListenConfig
from ztdns.config.lists import ListsConfig
from ztdns.config.local_zones import LocalZoneConfig
from ztdns.config.locate import Loc, format_loc, line_of
from ztdns.config.log import LogConfig
from ztdns.config.metrics import MetricsConfig
from ztdns.config.policy import PolicyConfig, RuleConfig, ScheduleConfig
from ztdns.config.resolver import ResolverConfig
from ztdns.config.server import ServerConfig

__all__ = [
    "Config",
    "ConfigError",
    "default_config",
    "load_config",
    "load_model",
    "located",
    "parse_config",
    "parse_model",
    "where",
]

Model = TypeVar("Model", bound=BaseModel)


class Config(Section):
    """The resolver's file (``ztdns serve``, ``ztdns check``): one field per area, and the checks across areas."""

    server: ServerConfig = ServerConfig()
    listen: list[ListenConfig] = [ListenConfig(transport="udp"), ListenConfig(transport="tcp")]
    resolver: ResolverConfig = ResolverConfig()
    cache: CacheConfig = CacheConfig()
    dnssec: DnssecConfig = DnssecConfig()
    identities: dict[str, IdentityConfig] = {}
    unknown_clients: UnknownClientsConfig = UnknownClientsConfig()
    policies: dict[str, PolicyConfig] = {}
    schedules: dict[str, ScheduleConfig] = {}
    lists: ListsConfig = ListsConfig()
    local_zones: list[LocalZoneConfig] = []
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    authority: AuthorityConfig = AuthorityConfig()
    attestation: AttestationConfig = AttestationConfig()
    detect: DetectConfig = DetectConfig()
    admin: AdminConfig = AdminConfig()
    control: ControlConfig | None = None

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
                    raise LocatedError(("identities", name, "policies", index), f"unknown policy {policy!r}")
        for name, policy_config in self.policies.items():
            if policy_config.schedule is not None and policy_config.schedule not in self.schedules:
                raise LocatedError(("policies", name, "schedule"), f"unknown schedule {policy_config.schedule!r}")
            written = (
                ("allow", policy_config.allow),
                ("deny", policy_config.deny),
                ("except", policy_config.exceptions),
            )
            for key, rules in written:
                for index, rule in enumerate(rules):
                    if isinstance(rule, RuleConfig) and rule.schedule and rule.schedule not in self.schedules:
                        where = ("policies", name, key, index, "schedule")
                        raise LocatedError(where, f"unknown schedule {rule.schedule!r}")
            lists = (("deny_lists", policy_config.deny_lists), ("allow_lists", policy_config.allow_lists))
            for key, sources in lists:
                for index, source in enumerate(sources):
                    if "://" in source and not source.startswith("https://"):
                        message = f"{source!r}: list feeds are fetched over HTTPS only (write https://HOST/PATH)"
                        raise LocatedError(("policies", name, key, index), message)
        unknown = self.unknown_clients
        if unknown.action == "identity" and unknown.identity not in self.identities:
            raise LocatedError(("unknown_clients", "identity"), f"unknown identity {unknown.identity!r}")
        return self

    @model_validator(mode="after")
    def _unambiguous_identities(self) -> Config:
        """The same network or exact certificate identity in two identities would make one of them dead."""
        owners: dict[object, str] = {}
        for name, identity in self.identities.items():
            keyed = (
                ("networks", identity.networks),
                ("certificates", identity.certificates),
                ("client_ids", identity.client_ids),
            )
            for key, values in keyed:
                for index, value in enumerate(values):
                    claim = ipaddress.ip_network(value, strict=False) if key == "networks" else (key, value)
                    owner = owners.setdefault(claim, name)
                    if owner != name:
                        raise LocatedError(
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
                raise LocatedError(("listen", index, "address"), message)
        return self

    def text(self) -> str:
        """The TOML text this config was parsed from ("" for configs built in code)."""
        return self._text


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one line per problem, each naming file, line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# Keys the loader sets on models that have them; a file that writes them is wrong.
_LOADER_KEYS = ("base_dir", "source")


def _clean_loc(loc: tuple[str | int, ...]) -> Loc:
    return tuple(part for part in loc if not (isinstance(part, str) and part.startswith("~")))


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class whose table ``loc`` names (``('identities', 'x')`` → IdentityConfig), if any."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap_model(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        else:
            args = typing.get_args(annotation)
            origin = typing.get_origin(annotation)
            if origin is list and isinstance(part, int) and args:
                annotation = args[0]
            elif origin is dict and isinstance(part, str) and len(args) == 2:
                annotation = args[1]
            else:
                return None
    annotation = _unwrap_model(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """Annotated[X, ...] → X; a union → its model member (a rule is a string or a table)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in map(_unwrap_model, typing.get_args(annotation)):
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member
    return annotation


def _unknown_key(root: type[BaseModel], loc: Loc) -> str:
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    keys = [name for name in model.model_fields if not (model is root and name in _LOADER_KEYS)]
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}keys here: {', '.join(keys)})"


def _message(root: type[BaseModel], error: Any, loc: Loc) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown_key(root, loc)
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Exception) and str(cause):
        return str(cause)
    msg = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] != "missing" and isinstance(value, str | int | float | bool):
        msg += f" (got {value!r})"
    return msg


def where(config: Config, loc: Loc) -> str:
    """``file:line: key`` for a key of a parsed config, to prefix problems found after validation."""
    line = line_of(config.text(), loc) if config.text() else None
    if line is None:  # the file does not set it (nor its table): the value came from the defaults
        return f"{config.source}: {format_loc(loc)} (not set in the file: the default)"
    return f"{config.source}:{line}: {format_loc(loc)}"


def located(config: Config, loc: Loc, message: str) -> ConfigError:
    """A ConfigError for a problem found after validation (a list file, a zone, TLS files): file:line: key: ..."""
    return ConfigError([f"{where(config, loc)}: {message}"])


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate TOML text; errors name ``source`` and the line of the offending key."""
    return parse_model(Config, text, source, base_dir)


def parse_model(model: type[Model], text: str, source: str = "<config>", base_dir: Path | None = None) -> Model:
    """Validate TOML text against any file model (``Config``, the agent's file model, ...)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r" \(at line (\d+), column (\d+)\)", str(exc))
        if match is None:
            raise ConfigError([f"{source}:?: TOML syntax error: {exc}"]) from None
        what = str(exc)[: match.start()]
        raise ConfigError([f"{source}:{match.group(1)}: TOML syntax error: {what} (column {match.group(2)})"]) from None
    for key in _LOADER_KEYS:
        if key in data and key in model.model_fields:
            line = line_of(text, (key,))
            raise ConfigError([f"{source}:{line}: {key}: unknown key (set by ztdns from the file's location)"])
    # Where the file came from, for models that keep it (relative paths, error messages).
    if base_dir is not None and "base_dir" in model.model_fields:
        data["base_dir"] = str(base_dir)
    if "source" in model.model_fields:
        data["source"] = source
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            cause = (error.get("ctx") or {}).get("error")
            loc = cause.loc if isinstance(cause, LocatedError) else _clean_loc(error["loc"])
            line = line_of(text, loc)
            key = format_loc(loc) or "(top level)"
            problems.append(f"{source}:{line if line is not None else '?'}: {key}: {_message(model, error, loc)}")
        raise ConfigError(problems) from None
    if isinstance(result, Config):
        result._text = text  # for errors found after validation (files it names): see where()
    return result


def load_config(path: str | Path) -> Config:
    return load_model(Config, path)


def load_model(model: type[Model], path: str | Path) -> Model:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_model(model, text, str(path), path.resolve().parent)


def default_config() -> Config:
    """The built-in configuration `ztdns serve` runs without --config (works with no internet)."""
    from ztdns.config.defaults import DEFAULT_TOML

    return parse_config(DEFAULT_TOML, "<built-in default>", Path("."))
