"""``[policies.NAME]``: allow and deny rules, list files and how blocked names are answered; docs/policy.md.

Rules are checked against the one name-pattern grammar (:mod:`ztdns.patterns`) when the file is loaded."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from typing import Annotated, Literal

import dns.rdatatype
from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from ztdns.config.base import Section
from ztdns.name_regex import check_regex, is_regex
from ztdns.patterns import PatternError, normalise_name, parse_pattern
from ztdns.wire.grant_scope import parse_port


def rewrite_target(target: str | list[str]) -> tuple[str | None, tuple[str, ...]]:
    """A rewrite's answer: ``(cname, ())`` for one name, ``(None, addresses)`` for IP addresses. ValueError else."""
    values = [target] if isinstance(target, str) else target
    if not values:
        raise ValueError("a rewrite needs an address or a name")
    addresses = []
    for value in values:
        try:
            addresses.append(str(ipaddress.ip_address(value)))
        except ValueError:
            if len(values) > 1:
                raise ValueError(f"{value!r}: a rewrite is addresses, or exactly one name") from None
            try:
                return normalise_name(value), ()
            except PatternError as exc:
                raise ValueError(str(exc)) from None
    return None, tuple(addresses)


def _qtype(text: str) -> str:
    try:
        dns.rdatatype.from_text(text)
    except Exception:
        raise ValueError(f"{text!r} is not a DNS record type") from None
    return text.upper()


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class ScheduleConfig(Section):
    """``[schedules.NAME]``: a weekly time window (docs/policy.md, "Schedules")."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(DAYS)  # type: ignore[arg-type]
    start: str = "00:00"
    end: str = "00:00"  # at or before start: past midnight (00:00–00:00 is the whole day)
    timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if _CLOCK.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not a time of day HH:MM")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone (IANA name, e.g. Europe/Berlin)") from None
        return value


class RuleConfig(Section):
    """A rule written as a table: a pattern, optionally limited to some query types or a schedule; a deny rule
    may be ``overridable`` (ranked like a list entry, so exceptions beat it; see docs/policy.md "Precedence")."""

    pattern: str
    qtypes: list[str] | None = None
    overridable: bool = False
    schedule: str | None = None  # a [schedules.NAME]: the rule applies only in its window
    # An allow rule's grant scope: ["tcp/443"] opens the answered addresses on those ports only (agents that
    # enforce scopes; docs/policy.md "Port-scoped allow rules"). None: every port.
    ports: list[str] | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _check_pattern(value)

    @field_validator("qtypes")
    @classmethod
    def _qtypes(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("qtypes must not be empty (leave the rule as a plain string for all types)")
        return [_qtype(v) for v in values]

    @field_validator("ports")
    @classmethod
    def _ports(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("ports must not be empty (leave it out for every port)")
        for value in values:
            parse_port(value)
        return values


def _check_pattern(value: str) -> str:
    try:
        if is_regex(value):
            check_regex(value)
        else:
            parse_pattern(value)
    except PatternError as exc:
        raise ValueError(str(exc)) from None
    return value


def _rule_kind(value: object) -> str:
    return "~table" if isinstance(value, dict | RuleConfig) else "~str"


# A rule is a pattern string, or a table with a pattern and qtypes. Tags starting with '~' are dropped from
# error locations, so errors read 'policies.web.allow[3]'.
Rule = Annotated[
    Annotated[Annotated[str, AfterValidator(_check_pattern)], Tag("~str")] | Annotated[RuleConfig, Tag("~table")],
    Discriminator(_rule_kind),
]


class PolicyConfig(Section):
    allow: list[Rule] = []
    deny: list[Rule] = []
    exceptions: list[Rule] = Field(default=[], alias="except")
    allow_lists: list[str] = []
    deny_lists: list[str] = []
    # "sinkhole": the addresses in `sinkhole` (A and AAAA by query type); "cname": a CNAME to `block_cname`.
    blocked_response: Literal["nxdomain", "nodata", "refused", "sinkhole", "cname"] = "nxdomain"
    sinkhole: list[str] = ["0.0.0.0", "::"]
    block_cname: str | None = None
    include_rule_text: bool = True
    # Local answers: pattern -> addresses (A/AAAA by query type) or one name (a CNAME). Allowed, no EDE.
    rewrites: dict[str, str | list[str]] = {}
    schedule: str | None = None  # a [schedules.NAME]: the whole policy applies only in its window

    @field_validator("sinkhole")
    @classmethod
    def _sinkhole(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_address(value)
        if not values:
            raise ValueError("sinkhole must name at least one address")
        return values

    @field_validator("block_cname")
    @classmethod
    def _block_cname(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_name(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("rewrites")
    @classmethod
    def _rewrites(cls, values: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for pattern, target in values.items():
            _check_pattern(pattern)
            rewrite_target(target)
        return values

    @model_validator(mode="after")
    def _cname_needs_target(self) -> PolicyConfig:
        if self.blocked_response == "cname" and self.block_cname is None:
            raise ValueError("blocked_response = 'cname' needs block_cname (the block page's name)")
        return self

    @model_validator(mode="after")
    def _overridable_only_on_deny(self) -> PolicyConfig:
        for key, rules in (("allow", self.allow), ("except", self.exceptions)):
            for index, rule in enumerate(rules):
                if isinstance(rule, RuleConfig) and rule.overridable:
                    raise ValueError(f"{key}[{index}]: 'overridable' applies to deny rules only")
        for key, rules in (("deny", self.deny), ("except", self.exceptions)):
            for index, rule in enumerate(rules):
                if isinstance(rule, RuleConfig) and rule.ports is not None:
                    raise ValueError(f"{key}[{index}]: 'ports' applies to allow rules only")
        return self
