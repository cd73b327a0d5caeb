"""``[identities.NAME]`` and ``[unknown_clients]``: who a client is (networks, certificate identities) and which
policies apply; docs/configuration.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ztdns.config.base import Section, check_network


def _certificate_pattern(value: str) -> str:
    if not value or value == "*":
        raise ValueError(f"{value!r} matches every certificate; name the identity or a prefix ending in '*'")
    if "*" in value[:-1]:
        raise ValueError(f"{value!r}: '*' may only end a prefix (spiffe://corp.example/ns/prod/*)")
    return value


CLIENT_ID = re.compile(r"[a-z0-9-]{1,64}")


def _client_id(value: str) -> str:
    if CLIENT_ID.fullmatch(value) is None:
        raise ValueError(f"{value!r}: a client id is 1-64 lower-case letters, digits and '-'")
    return value


class IdentityConfig(Section):
    networks: list[Annotated[str, AfterValidator(check_network)]] = []
    # Certificate identities (SPIFFE IDs, DNS SANs, CNs): exact, or a prefix ending in '*'.
    certificates: list[Annotated[str, AfterValidator(_certificate_pattern)]] = []
    # Client ids claimed in the DoH path (/dns-query/ID) or the DoT/DoQ SNI (ID.dns.example): a claim, not
    # authentication (docs/policy.md).
    client_ids: list[Annotated[str, AfterValidator(_client_id)]] = []
    policies: Annotated[list[str], Field(min_length=1)]


class UnknownClientsConfig(Section):
    action: Literal["refuse", "identity"] = "refuse"
    identity: str | None = None

    @model_validator(mode="after")
    def _identity(self) -> UnknownClientsConfig:
        if self.action == "identity" and not self.identity:
            raise ValueError("action = 'identity' needs identity = NAME")
        return self
