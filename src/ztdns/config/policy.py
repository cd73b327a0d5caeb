"""``[policies.NAME]``: allow and deny rules, list files and how blocked names are answered; docs/policy.md.

Rules are checked against the one name-pattern grammar (:mod:`ztdns.patterns`) when the file is loaded."""

from __future__ import annotations

from typing import Annotated, Literal

import dns.rdatatype
from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from ztdns.config.base import Section
from ztdns.patterns import PatternError, parse_pattern


def _qtype(text: str) -> str:
    try:
        dns.rdatatype.from_text(text)
    except Exception:
        raise ValueError(f"{text!r} is not a DNS record type") from None
    return text.upper()


class RuleConfig(Section):
    """A rule written as a table: a pattern, optionally limited to some query types; a deny rule may be
    ``overridable`` (ranked like a list entry, so exceptions beat it; see docs/policy.md "Precedence")."""

    pattern: str
    qtypes: list[str] | None = None
    overridable: bool = False

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


def _check_pattern(value: str) -> str:
    try:
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
    blocked_response: Literal["nxdomain", "nodata", "refused"] = "nxdomain"
    include_rule_text: bool = True

    @model_validator(mode="after")
    def _overridable_only_on_deny(self) -> PolicyConfig:
        for key, rules in (("allow", self.allow), ("except", self.exceptions)):
            for index, rule in enumerate(rules):
                if isinstance(rule, RuleConfig) and rule.overridable:
                    raise ValueError(f"{key}[{index}]: 'overridable' applies to deny rules only")
        return self
