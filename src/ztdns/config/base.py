"""What every config area shares: the strict section base, address validators, located cross-key errors."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


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


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:53', '[::1]:53', '::1' or '10.0.0.1' → (address, port). Raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def _check_hostport(value: str) -> str:
    parse_hostport(value, 53)  # the default port does not change what is valid
    return value


# "IP:PORT", "[IPv6]:PORT" or a bare IP literal; each model's hostport() supplies its own default port.
HostPort = Annotated[str, AfterValidator(_check_hostport)]


class LocatedError(ValueError):
    """A cross-reference error that knows which key it belongs to (pydantic only knows the model)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
