"""``[admin]``: the admin API and web console listener (docs/console.md).

Who may do what: mTLS admin identities (a verified client certificate's SPIFFE ID, exact or a prefix ending in
``*``) and bearer tokens, each with a role. Tokens are stored only as hashes: ``sha256:HEX`` (tokens are 32
random bytes, so a fast hash is enough) or ``scrypt:N:r:p:SALT_HEX:HASH_HEX`` for tokens chosen by people.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ztdns.config.base import HostPort, Section, parse_hostport

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_SCRYPT = re.compile(r"^scrypt:\d+:\d+:\d+:[0-9a-f]{16,}:[0-9a-f]{32,}$")


def _token_hash(value: str) -> str:
    if not (_SHA256.match(value) or _SCRYPT.match(value)):
        raise ValueError(
            "a token is stored as 'sha256:<64 hex digits>' or 'scrypt:N:r:p:<salt hex>:<hash hex>' "
            "(`ztdns api token` makes one)"
        )
    return value


def _identity_pattern(value: str) -> str:
    if not value or value == "*" or "*" in value[:-1]:
        raise ValueError(f"{value!r}: name an identity, or a prefix ending in '*' (spiffe://corp.example/admin/*)")
    return value


class AdminTokenConfig(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    role: Role
    hash: Annotated[str, AfterValidator(_token_hash)]


class AdminIdentityConfig(Section):
    identity: Annotated[str, AfterValidator(_identity_pattern)]
    role: Role


class AdminConfig(Section):
    """Off unless ``address`` is set. ``cert``/``key`` are the listener's; ``ca`` verifies admin client
    certificates (optional: without it only tokens authenticate). Paths are relative to the config file;
    ``audit_log`` to ``server.state_dir``."""

    address: HostPort | None = None
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    identities: list[AdminIdentityConfig] = []
    tokens: list[AdminTokenConfig] = []
    audit_log: str = "admin-audit.jsonl"
    session_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = 8 * 3600
    login_attempts_per_minute: Annotated[int, Field(ge=1, le=1000)] = 5

    @model_validator(mode="after")
    def _complete(self) -> AdminConfig:
        if self.address is not None and not (self.cert and self.key):
            raise ValueError("the admin listener needs cert and key (HTTPS only)")
        names = [token.name for token in self.tokens]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"token name {name!r} is used twice")
        return self

    def hostport(self) -> tuple[str, int]:
        assert self.address is not None
        return parse_hostport(self.address, 9443)
