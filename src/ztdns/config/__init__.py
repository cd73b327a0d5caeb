"""Configuration: typed models (model.py), loading with file:line:key errors (here), positions (locate.py).

``load_config(path)`` returns a validated :class:`Config` or raises :class:`ConfigError`, whose lines read
``examples/bad.toml:12: policies.web.allow[3]: '*.*.x' is not a valid pattern``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ztdns.config.locate import Loc, format_loc, line_of
from ztdns.config.model import Config, _LocatedError

__all__ = ["Config", "ConfigError", "default_config", "load_config", "load_model", "parse_config", "parse_model"]

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one line per problem, each naming file, line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _clean_loc(loc: tuple[str | int, ...]) -> Loc:
    return tuple(part for part in loc if not (isinstance(part, str) and part.startswith("~")))


def _message(error: Any) -> str:
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Exception) and str(cause):
        return str(cause)
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate TOML text; errors name ``source`` and the line of the offending key."""
    return parse_model(Config, text, source, base_dir)


def parse_model(model: type[Model], text: str, source: str = "<config>", base_dir: Path | None = None) -> Model:
    """Validate TOML text against any file model (``Config``, the agent's file model, ...)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = match.group(1) if match else "?"
        raise ConfigError([f"{source}:{line}: {exc}"]) from None
    # Where the file came from, for models that keep it (relative paths, error messages).
    if base_dir is not None and "base_dir" in model.model_fields:
        data["base_dir"] = str(base_dir)
    if "source" in model.model_fields:
        data["source"] = source
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            cause = (error.get("ctx") or {}).get("error")
            loc = cause.loc if isinstance(cause, _LocatedError) else _clean_loc(error["loc"])
            line = line_of(text, loc)
            key = format_loc(loc) or "(top level)"
            problems.append(f"{source}:{line if line is not None else '?'}: {key}: {_message(error)}")
        raise ConfigError(problems) from None


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
