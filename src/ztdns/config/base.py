"""What every config model shares, importable by capability config modules without import cycles."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_network(value: str) -> str:
    """Validator for one IP network ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (write an address or ADDRESS/PREFIX)") from None
    return value


def check_networks(values: list[str]) -> list[str]:
    """Validator for a list of IP networks."""
    for value in values:
        check_network(value)
    return values
