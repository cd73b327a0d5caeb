"""The one name-pattern grammar, used by policy rules, list files and (later) agent exceptions.

It imports nothing of ztdns, so the config schema (the bottom layer) checks rules with it when a file loads.

    example.com        exactly that name
    *.example.com      exactly one label below example.com (not example.com, not a.b.example.com)
    **.example.com     any depth below example.com (a.example.com, a.b.example.com; the apex only if listed)
    **                 every name (the root too)

A wildcard may only be the whole leftmost label, and only once: ``*.*.x``, ``a*.x``, ``x.*.y`` are invalid.
Names are case-insensitive and stored lower-case without the trailing dot (the root is the empty string).
Internationalised labels may be written in Unicode: they are converted to their ``xn--`` form with IDNA 2008
(the ``idna`` package, with UTS 46 mapping, so ``Bücher`` and ``bücher`` are the same label).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import idna


class Scope(enum.Enum):
    EXACT = "exact"
    ONE_LABEL = "one-label"
    ANY_DEPTH = "any-depth"


@dataclass(frozen=True, slots=True)
class Pattern:
    scope: Scope
    base: str  # the name the pattern hangs from: lower-case, no trailing dot; "" is the root

    def __str__(self) -> str:
        if not self.base:
            return "**" if self.scope is Scope.ANY_DEPTH else "."
        return _PREFIX[self.scope] + self.base


_PREFIX = {Scope.EXACT: "", Scope.ONE_LABEL: "*.", Scope.ANY_DEPTH: "**."}


class PatternError(ValueError):
    pass


# A lower-case name without the trailing dot: labels of letters, digits, '-' and '_', 1–63 octets each.
# Exposed as regex source so that list parsing (ztdns.policy.lists) can embed it in its line patterns.
NAME_REGEX = r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*"
MAX_NAME_LENGTH = 253
_is_name = re.compile(NAME_REGEX).fullmatch


def is_normal_name(name: str) -> bool:
    """Whether ``name`` is in normal form (lower-case, valid labels, no trailing dot) and not the root."""
    return len(name) <= MAX_NAME_LENGTH and _is_name(name) is not None


def idna_to_ascii(name: str) -> str:
    """``name`` with every non-ASCII label in its IDNA 2008 ``xn--`` form; raises PatternError if one is invalid."""
    if name.isascii():
        return name
    try:
        return ".".join(
            label if label.isascii() else idna.encode(label, uts46=True).decode("ascii") for label in name.split(".")
        )
    except idna.IDNAError as exc:
        raise PatternError(f"{name!r} is not a valid internationalised name: {exc}") from None


def normalise_name(text: str) -> str:
    """Lower-case, strip one trailing dot, convert Unicode labels (IDNA 2008), check label syntax (LDH plus
    underscore, 1–63 octets, ≤ 253)."""
    name = idna_to_ascii(text.strip()).lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return ""
    if len(name) > MAX_NAME_LENGTH:
        raise PatternError(f"{text!r} is longer than {MAX_NAME_LENGTH} characters")
    if _is_name(name) is None:
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
