"""List files: the common blocklist/allowlist formats, detected line by line (see docs/policy.md).

Each line yields zero or more ``(name, bits)`` entries. ``bits`` is a bit set over :data:`STANDARD_SPECS`:
bit ``3·kind + scope`` says the entry applies with that scope (exact, one label below, any depth below) and
that kind (the list's own sense, AdBlock ``$important``, AdBlock ``@@`` exception, important exception):

    example.com            plain line: a pattern of the grammar — exactly that name (``*.``/``**.`` allowed)
    0.0.0.0 a.example b.x  hosts line: each name exactly; localhost-style names are skipped
    ||ads.example^         AdBlock line: the name and any depth below it (``||*.x^``: below only; ``|x|``: exact)
    @@||ads.example^       AdBlock exception; ``$important`` marks either kind important
    # ...  ! ...  [Adblock Plus 2.0]   comments; blank lines

Everything else (AdBlock modifiers we cannot honour, paths, cosmetic ``##`` rules, invalid names) is skipped
and counted by reason; a list never fails on its content. Invalid UTF-8 is replaced, so the line with it is
skipped as invalid. Unicode names are converted with IDNA 2008. Lines that are plain names take a single-regex
fast path: a million of them load in about a second. RPZ zone files are detected as a whole and parsed by
:mod:`ztdns.policy.rpz`, which adds specs with actions after the standard ones.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ztdns.patterns import (
    MAX_NAME_LENGTH,
    NAME_REGEX,
    PatternError,
    Scope,
    idna_to_ascii,
    is_normal_name,
    parse_pattern,
)

log = logging.getLogger("ztdns.policy")

EXACT = 1
ONE_LABEL = 2
ANY_DEPTH = 4
SCOPE_BITS = {Scope.EXACT: EXACT, Scope.ONE_LABEL: ONE_LABEL, Scope.ANY_DEPTH: ANY_DEPTH}


class EntryKind(enum.IntEnum):
    """What a list entry does, relative to the list it is in (see docs/policy.md, "Precedence")."""

    PLAIN = 0  # the list's own sense: a deny in deny_lists, an allow in allow_lists
    IMPORTANT = 1  # AdBlock '$important': a deny that beats list exceptions
    EXCEPTION = 2  # AdBlock '@@': overrides list denies
    IMPORTANT_EXCEPTION = 3  # '@@...$important': overrides important denies too


@dataclass(frozen=True, slots=True)
class LocalData:
    """An answer given instead of the real one: a CNAME target, or addresses (A and AAAA, by query type)."""

    cname: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Spec:
    """What one bit of an entry's bit set means: scope, kind, and (RPZ only) the action of the entry."""

    scope: Scope
    kind: EntryKind
    action: str | None = None  # None: the policy's blocked_response; else "nxdomain", "nodata", "drop", "local"
    local: LocalData | None = None


def _bits(kind: EntryKind, scopes: int) -> int:
    return scopes << (3 * kind)


STANDARD_SPECS = tuple(Spec(scope, kind) for kind in EntryKind for scope in SCOPE_BITS)

# Names hosts files map to loopback for the machine itself; they are not blocklist entries.
_HOSTS_LOCAL = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)

# The fast path: a line that is one name, optionally after the two usual hosts-file sink addresses.
_SIMPLE_LINE = re.compile(rf"(0\.0\.0\.0[ \t]+|127\.0\.0\.1[ \t]+)?({NAME_REGEX})\.?[ \t]*\r?\n?").fullmatch
_ADBLOCK_LINE = re.compile(rf"\|\|({NAME_REGEX})\.?\^\|?[ \t]*\r?\n?").fullmatch
# The general AdBlock network rule operators use for DNS: '@@'? then '||' (name and below), '||*.' (below
# only) or '|' (exactly), the name, an end ('^', '|', '^|' or nothing), then '$modifiers'.
_ADBLOCK_RULE = re.compile(r"(@@)?(\|\|\*\.|\|\||\|)([^/^|$*]+?)\.?(\^\|?|\|)?(?:\$(.*))?").fullmatch
_ADBLOCK_SCOPES = {"||": EXACT | ANY_DEPTH, "||*.": ANY_DEPTH, "|": EXACT}
# Element-hiding and scriptlet rules: 'example.com##.banner', 'example.com#@#.x', 'example.com#?#...'.
_COSMETIC = re.compile(r"#[@?$%]?#")


@dataclass(slots=True)
class Tally:
    """What a scan saw besides entries: lines read, and lines without entries by reason."""

    lines: int = 0
    comments: int = 0  # comment and blank lines
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(self.skipped.items()))
        return f"{self.lines} lines, {self.comments} comment/blank, {self.skipped.total()} skipped" + (
            f" ({reasons})" if reasons else ""
        )


@dataclass(slots=True)
class ListFile:
    """One parsed list file."""

    path: str  # as written in the configuration (what EDE text and logs show)
    entries: dict[str, int]  # name -> bit set over specs
    tally: Tally
    specs: tuple[Spec, ...] = STANDARD_SPECS  # bit i means specs[i]
    lines_known: bool = True  # whether explain can find an entry's line by re-scanning (not for RPZ)


def scan(lines: Iterable[str], tally: Tally) -> Iterator[tuple[int, str, int]]:
    """Yield ``(line number, name, scope bits)`` for every entry; count the other lines in ``tally``."""
    skipped = tally.skipped
    number = 0
    for number, line in enumerate(lines, 1):
        match = _SIMPLE_LINE(line)
        if match is not None:
            name = match[2]
            if len(name) > MAX_NAME_LENGTH:
                skipped["invalid"] += 1
            elif match[1] is not None and name in _HOSTS_LOCAL:
                skipped["hosts-local"] += 1
            else:
                yield number, name, EXACT
            continue
        match = _ADBLOCK_LINE(line)
        if match is not None and len(match[1]) <= MAX_NAME_LENGTH:
            yield number, match[1], EXACT | ANY_DEPTH
            continue
        found = False
        reason = ""
        text = line.strip()
        for entry in _slow_line(text if text[:1] in "|@" else text.lower()):
            if isinstance(entry, str):
                reason = entry
            else:
                found = True
                yield number, entry[0], entry[1]
        if not found:
            if reason == "comment":
                tally.comments += 1
            else:
                skipped[reason] += 1
    tally.lines = number


def _slow_line(line: str) -> Iterator[tuple[str, int] | str]:
    """Entries of a line the fast path did not take, or a reason string when it yields none."""
    if not line or line[0] in "#![":
        yield "comment"
        return
    if line[0] in "|@":
        yield _adblock(line)
        return
    if _COSMETIC.search(line):
        yield "adblock-cosmetic"
        return
    # Trailing comments: '#' after whitespace ('0.0.0.0 a.example  # tracker').
    cut = min((i for i in (line.find(" #"), line.find("\t#")) if i >= 0), default=-1)
    words = (line[:cut] if cut >= 0 else line).split()
    if words[0].startswith("/") and words[0].endswith("/") and len(words[0]) > 2:
        yield "regex"
        return
    if len(words) == 1:
        try:
            pattern = parse_pattern(words[0])
        except PatternError:
            yield "invalid"
            return
        yield pattern.base, SCOPE_BITS[pattern.scope]
        return
    if not _is_address(words[0]):
        yield "invalid"
        return
    reason = "hosts-local"
    for word in words[1:]:
        name = word.removesuffix(".")
        if name in _HOSTS_LOCAL:
            continue
        try:
            name = idna_to_ascii(name)
        except PatternError:
            reason = "invalid"
            continue
        if is_normal_name(name):
            yield name, EXACT
        else:
            reason = "invalid"
    yield reason


def _adblock(line: str) -> tuple[str, int] | str:
    """The entry of an AdBlock line, or the reason it is skipped (``adblock-modifier:NAME`` for modifiers)."""
    match = _ADBLOCK_RULE(line)
    if match is None:
        if line.startswith("@@") or line.startswith("|"):
            return "adblock-unsupported"  # paths ('||x/ads/'), 'http://' addresses, wildcards inside names
        return "invalid"
    exception, operator, name, _, modifiers = match.groups()
    important = False
    if modifiers:
        # Only '$important' is honoured; a rule with any other modifier means something narrower than the
        # name (a client, a query type, a request type), so applying it to the name would be wrong: skip it.
        for modifier in modifiers.lower().split(","):
            key = modifier.strip().lstrip("~").partition("=")[0]
            if key != "important":
                return f"adblock-modifier:{key or 'empty'}"
            important = True
    try:
        pattern = parse_pattern(name)
    except PatternError:
        return "invalid"
    if pattern.scope is not Scope.EXACT or not pattern.base:
        return "invalid"
    kind = EntryKind(2 * bool(exception) + important)
    return pattern.base, _bits(kind, _ADBLOCK_SCOPES[operator])


def _is_address(word: str) -> bool:
    try:
        ipaddress.ip_address(word.partition("%")[0])  # 'fe80::1%lo0' carries a zone index
    except ValueError:
        return False
    return True


def _open(path: Path) -> Iterator[str]:
    # errors="replace": a line with invalid UTF-8 is skipped as invalid instead of failing the whole list.
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        yield from handle


def read_list(path: Path, shown_as: str) -> ListFile:
    """Parse the list at ``path``; raises OSError if it cannot be read. Logs one summary line (a WARNING when
    the list gives no entries: a list that silently blocks nothing is a broken list)."""
    from ztdns.policy.rpz import is_rpz, read_rpz

    if is_rpz(path):
        parsed = read_rpz(path, shown_as)
    else:
        tally = Tally()
        entries: dict[str, int] = {}
        get = entries.get
        for _, name, bits in scan(_open(path), tally):
            entries[name] = get(name, 0) | bits
        parsed = ListFile(shown_as, entries, tally)
    level = logging.INFO if parsed.entries else logging.WARNING
    log.log(level, "list %s: %d entries; %s", shown_as, len(parsed.entries), parsed.tally.summary())
    return parsed


def find_line(path: Path, name: str, bit: int) -> int | None:
    """The first line of the list at ``path`` that gives ``name`` the spec bit ``bit`` (for ``ztdns explain``).

    Re-scans the file rather than keeping a line number per entry: memory matters more than explain speed.
    """
    for number, entry, bits in scan(_open(path), Tally()):
        if entry == name and bits & bit:
            return number
    return None
