"""What every config model shares, importable by capability config modules without import cycles."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_networks(values: list[str]) -> list[str]:
    """Validator body for lists of IP networks ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network") from None
    return values
