"""The one name-pattern grammar, used by policy rules, list files and (later) agent exceptions.

    example.com        exactly that name
    *.example.com      exactly one label below example.com (not example.com, not a.b.example.com)
    **.example.com     any depth below example.com (a.example.com, a.b.example.com; apex only if listed too)
    **                 every name

A wildcard may only be the whole leftmost label, and only once: ``*.*.x``, ``a*.x``, ``x.*.y`` are invalid.
Names are case-insensitive and stored lower-case without the trailing dot (the root is the empty string).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Scope(enum.Enum):
    EXACT = "exact"
    ONE_LABEL = "one-label"
    ANY_DEPTH = "any-depth"


@dataclass(frozen=True, slots=True)
class Pattern:
    scope: Scope
    base: str  # the name the pattern hangs from: lower-case, no trailing dot; "" is the root

    def __str__(self) -> str:
        prefix = {Scope.EXACT: "", Scope.ONE_LABEL: "*.", Scope.ANY_DEPTH: "**."}[self.scope]
        if self.scope is Scope.ANY_DEPTH and not self.base:
            return "**"
        return prefix + self.base


class PatternError(ValueError):
    pass


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def normalise_name(text: str) -> str:
    """Lower-case, strip one trailing dot, check label syntax (LDH plus underscore, 1–63 octets, ≤ 253)."""
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return ""
    if len(name) > 253:
        raise PatternError(f"{text!r} is longer than 253 characters")
    for label in name.split("."):
        if not label or len(label) > 63 or not _LABEL_CHARS.issuperset(label):
            raise PatternError(f"{text!r} is not a valid domain name")
    return name


def parse_pattern(text: str) -> Pattern:
    """Parse one pattern of the grammar above; raises PatternError naming the pattern."""
    raw = text.strip()
    if raw in ("**", "**."):
        return Pattern(Scope.ANY_DEPTH, "")
    scope = Scope.EXACT
    rest = raw
    if raw.startswith("**."):
        scope, rest = Scope.ANY_DEPTH, raw[3:]
    elif raw.startswith("*."):
        scope, rest = Scope.ONE_LABEL, raw[2:]
    if "*" in rest or (scope is not Scope.EXACT and not rest.strip(".")):
        raise PatternError(f"{text!r} is not a valid pattern")
    try:
        return Pattern(scope, normalise_name(rest))
    except PatternError:
        raise PatternError(f"{text!r} is not a valid pattern") from None
