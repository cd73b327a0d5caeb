"""``[[local_zones]]``: small zones answered from memory, from records or a zone file; docs/configuration.md."""

from __future__ import annotations

from pydantic import field_validator, model_validator

from ztdns.config.base import Section
from ztdns.patterns import PatternError, normalise_name


class LocalZoneConfig(Section):
    name: str
    records: list[str] = []
    file: str | None = None

    @model_validator(mode="after")
    def _source(self) -> LocalZoneConfig:
        if self.records and self.file is not None:
            raise ValueError("give the zone's records or its file, not both")
        if not self.records and self.file is None:
            raise ValueError("a local zone needs records or a file (with at least an SOA)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return normalise_name(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
