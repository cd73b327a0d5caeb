"""``[lists]``: list feeds — list sources given as HTTPS URLs, fetched and refreshed in the background;
docs/policy.md, "List feeds".

A ``deny_lists``/``allow_lists`` entry that starts with ``https://`` is a feed. ``[lists]`` holds the defaults for
every feed; a ``[[lists.feeds]]`` table with the same ``url`` sets options for that one feed (CA, SPKI pin,
integrity, and any default)."""

from __future__ import annotations

import base64
import re
from typing import Annotated

from pydantic import Field, field_validator

from ztdns.config.base import Section

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _https(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError(f"{value!r}: list feeds are fetched over HTTPS only (write https://HOST/PATH)")
    return value


class FeedOptions(Section):
    """What every feed may set; in ``[lists]`` these are the defaults (None in a feed: use the default)."""

    refresh: Annotated[float, Field(ge=60)] | None = None  # seconds between fetches
    jitter: Annotated[float, Field(ge=0, le=0.5)] | None = None  # ± this fraction of refresh, at random
    timeout: Annotated[float, Field(gt=0, le=600)] | None = None  # seconds for one whole fetch
    max_bytes: Annotated[int, Field(ge=1024)] | None = None  # a bigger body is refused
    max_shrink: Annotated[float, Field(ge=0, le=1)] | None = None  # hold back copies that shrank by more


class FeedConfig(FeedOptions):
    url: str
    ca: str | None = None  # PEM bundle the server's certificate must chain to (default: the system store)
    spki_pin: str | None = None  # base64 SHA-256 of the server certificate's SubjectPublicKeyInfo
    sha256: str | None = None  # hex SHA-256 the body must have (a fixed, pinned list)
    signing_key: str | None = None  # Ed25519 public key (PEM); the signature is fetched from URL + ".sig"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _https(value)

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and _SHA256.fullmatch(value.lower()) is None:
            raise ValueError("sha256 must be 64 hex digits")
        return None if value is None else value.lower()

    @field_validator("spki_pin")
    @classmethod
    def _pin(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if len(base64.b64decode(value, validate=True)) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError("spki_pin must be the base64 SHA-256 of a SubjectPublicKeyInfo") from None
        return value


class ListsConfig(Section):
    refresh: Annotated[float, Field(ge=60)] = 86400.0
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    timeout: Annotated[float, Field(gt=0, le=600)] = 60.0
    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_shrink: Annotated[float, Field(ge=0, le=1)] = 0.5
    feeds: list[FeedConfig] = []

    def feed(self, url: str) -> FeedConfig:
        """The settings of the feed at ``url``: its ``[[lists.feeds]]`` table with the defaults filled in."""
        found = next((feed for feed in self.feeds if feed.url == url), None) or FeedConfig(url=url)
        defaults = {key: getattr(self, key) for key in FeedOptions.model_fields}
        return found.model_copy(update={key: value for key, value in defaults.items() if getattr(found, key) is None})
