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
skipped as invalid. Unicode names are converted with IDNA 2008. Lines in the three common forms (a name, a
sink address and a name, ``||name^``) take a fast path of plain string operations; a parsed file is its names
grouped by bit set, which :mod:`ztdns.policy.compile` inserts into a policy's table in C loops. RPZ zone files
are detected as a whole and parsed by :mod:`ztdns.policy.rpz`, which adds specs with actions after the standard
ones.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, not_
from pathlib import Path

from ztdns.name_regex import check_regex, is_regex
from ztdns.patterns import (
    MAX_NAME_LENGTH,
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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

# The fast path, plain string operations only: a line that is one name, alone, after one of the two usual
# hosts-file sink addresses, or as '||name^'. A name that passes ``lstrip`` with these characters to nothing holds
# no other character (no space, no upper case, no non-ASCII): those lines take the general path.
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-."
_SINKS = ("0.0.0.0 ", "127.0.0.1 ")
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
    """One parsed list file: its names grouped by bit set (a group's names may repeat; a name in two groups of
    one file has both bit sets). Groups of plain lists rather than one dict: compiling inserts every name into
    its policy's table once, in C loops (see :mod:`ztdns.policy.compile`)."""

    path: str  # as written in the configuration (what EDE text and logs show)
    groups: dict[int, list[str]]  # bit set over specs -> names
    tally: Tally
    specs: tuple[Spec, ...] = STANDARD_SPECS  # bit i means specs[i]
    lines_known: bool = True  # whether explain can find an entry's line by re-scanning (not for RPZ)
    regexes: list[str] = field(default_factory=list)  # '/pattern/' lines (ztdns.name_regex), the list's sense
    addresses: list[tuple[Network, int]] = field(default_factory=list)  # RPZ-IP triggers: prefix, spec bit

    @classmethod
    def of(
        cls, path: str, entries: dict[str, int], tally: Tally, specs: tuple[Spec, ...], lines_known: bool
    ) -> ListFile:
        """A list file from a dict of name -> bit set (RPZ files: small, parsed as a whole)."""
        groups: dict[int, list[str]] = {}
        for name, bits in entries.items():
            groups.setdefault(bits, []).append(name)
        return cls(path, groups, tally, specs, lines_known)

    @property
    def count(self) -> int:
        """Entries read: names with their bit sets (a name listed twice the same way counts twice)."""
        return sum(map(len, self.groups.values())) + len(self.regexes) + len(self.addresses)

    def entries(self) -> dict[str, int]:
        """Name -> bit set (for tests and tools; compiling uses the groups)."""
        merged = dict.fromkeys(self.regexes, EXACT)
        for bits, names in self.groups.items():
            for name in names:
                merged[name] = merged.get(name, 0) | bits
        return merged


def _simple(line: str) -> tuple[str, int] | None:
    """The entry of a line in one of the common forms (see ``_NAME_CHARS``), or None for the general path."""
    bits = EXACT
    if line[:2] == "||":
        if line[-1:] != "^":
            return None
        name, bits = line[2:-1], EXACT | ANY_DEPTH
    elif line.startswith(_SINKS):
        name = line.partition(" ")[2].strip(" \t")
        if name in _HOSTS_LOCAL:
            return None
    else:
        name = line
    if not name or name.lstrip(_NAME_CHARS):
        return None
    if name[-1] == ".":
        name = name[:-1]
    if not name or name[0] == "." or name[-1] == "." or ".." in name:
        return None
    if len(name) > 63 and (len(name) > MAX_NAME_LENGTH or max(map(len, name.split("."))) > 63):
        return None
    return name, bits


def _lines(path: Path) -> list[str]:
    """The file's lines without their ends. Invalid UTF-8 is replaced, so a line with it is skipped as invalid
    instead of failing the whole list. Read a block at a time, so that no one call holds the GIL for long (a
    feed is compiled in a thread beside the event loop that answers)."""
    lines: list[str] = []
    tail = b""
    with path.open("rb") as file:
        while block := file.read(_BLOCK):
            block = tail + block
            cut = block.rfind(b"\n") + 1  # a newline byte is never inside a UTF-8 sequence
            tail = block[cut:]
            if cut:
                text = block[:cut].decode("utf-8", "replace")
                lines += (text.replace("\r\n", "\n") if "\r" in text else text).split("\n")
                lines.pop()  # the end of the block's last line, not a line
    if tail:
        text = tail.decode("utf-8", "replace")
        lines += (text.replace("\r\n", "\n") if "\r" in text else text).split("\n")
    return lines


def scan(lines: Iterable[str], tally: Tally) -> Iterator[tuple[int, str, int]]:
    """Yield ``(line number, name, scope bits)`` for every entry; count the other lines in ``tally``."""
    number = 0
    for number, line in enumerate(lines, 1):
        hit = _simple(line.rstrip("\r\n"))
        if hit is not None:
            yield number, hit[0], hit[1]
            continue
        for name, bits in _general(line, tally):
            yield number, name, bits
    tally.lines = number


def _general(line: str, tally: Tally) -> list[tuple[str, int]]:
    """The entries of a line the fast path did not take; a line without any is counted in ``tally``."""
    found: list[tuple[str, int]] = []
    reason = ""
    text = line.strip()
    for entry in _slow_line(text if text[:1] in "|@/" else text.lower()):
        if isinstance(entry, str):
            reason = entry
        else:
            found.append(entry)
    if not found:
        if reason == "comment":
            tally.comments += 1
        else:
            tally.skipped[reason] += 1
    return found


def _slow_line(line: str) -> Iterator[tuple[str, int] | str]:
    """Entries of a line the fast path did not take, or a reason string when it yields none."""
    if not line or line[0] in "#![":
        yield "comment"
        return
    if line[0] in "|@":
        yield _adblock(line)
        return
    if is_regex(line):
        try:
            check_regex(line)
        except PatternError:
            yield "regex-unsupported"
            return
        yield line, EXACT  # kept apart from the names by read_list (a name never starts with '/')
        return
    if _COSMETIC.search(line):
        yield "adblock-cosmetic"
        return
    # Trailing comments: '#' after whitespace ('0.0.0.0 a.example  # tracker').
    cut = min((i for i in (line.find(" #"), line.find("\t#")) if i >= 0), default=-1)
    words = (line[:cut] if cut >= 0 else line).split()
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


_IS_LABEL_LENGTH = range(1, 64).__contains__
# Work per C call when a list is read: about a millisecond each (see _bulk and _lines).
_SLICE = 8192
_BLOCK = 1 << 18


def _peel(lines: list[str], prefix: str, suffix: str) -> tuple[list[str], list[str]]:
    """The names of the lines that are ``prefix`` + a name + ``suffix``, and the other lines, in C loops only
    (``map``, ``compress``): the fast path of :func:`_simple` for whole files at a time. A chunk with anything
    unusual (a name longer than a label, a dot out of place, a hosts-file local name) goes back whole to
    the per-line path, which has the last word."""
    if prefix or suffix:
        marks = list(map(str.startswith, lines, repeat(prefix)))
        if suffix:
            marks = list(map(and_, marks, map(str.endswith, lines, repeat(suffix))))
        chunk = list(compress(lines, marks))
        if not chunk:
            return [], lines
        rest = list(compress(lines, map(not_, marks)))
        candidates = [line[len(prefix) : len(line) - len(suffix)] for line in chunk]
    else:
        chunk = candidates = lines
        rest = []
    clean = list(
        map(
            and_,
            map(not_, map(str.lstrip, candidates, repeat(_NAME_CHARS))),
            map(_IS_LABEL_LENGTH, map(len, candidates)),
        )
    )
    names = list(map(str.removesuffix, compress(candidates, clean), repeat(".")))
    rest.extend(compress(chunk, map(not_, clean)))
    joined = "\n".join(names)
    if (
        "" in names  # a line that was only a dot (the root), alone or among others
        or "\n." in joined
        or ".\n" in joined
        or ".." in joined
        or joined[:1] == "."
        or joined[-1:] == "."
        or (prefix in _SINKS and not _HOSTS_LOCAL.isdisjoint(names))
    ):
        rest.extend(compress(chunk, clean))
        return [], rest
    return names, rest


def _bulk(lines: list[str], tally: Tally) -> tuple[dict[int, list[str]], list[str]]:
    """The entries of the lines in the common forms, by bit set, and the lines left for the per-line path. A
    slice of lines at a time: each C loop is short, so the event loop gets the GIL back within milliseconds."""
    exact: list[str] = []
    below: list[str] = []
    rest: list[str] = []
    for start in range(0, len(lines), _SLICE):
        piece = lines[start : start + _SLICE]
        blank = piece.count("")
        if blank:
            tally.comments += blank
            piece = list(filter(None, piece))
        names, left = _peel(piece, "", "")
        exact += names
        for sink in _SINKS:
            names, left = _peel(left, sink, "")
            exact += names
        names, left = _peel(left, "||", "^")
        below += names
        rest += left
    return {EXACT: exact, EXACT | ANY_DEPTH: below}, rest


def free_in_pieces(items: list[str]) -> None:
    """Empty a list a slice at a time, from its end: dropping millions of references in one C call holds the GIL
    for ~10 ms (and the event loop that answers waits for it)."""
    while items:
        del items[-_SLICE:]


@contextlib.contextmanager
def beside_the_loop() -> Iterator[None]:
    """Lower the interpreter's switch interval while long work (parsing, compiling, freeing tables) runs in a
    thread beside the event loop that answers, and restore it when the last such work ends.

    The event loop gives up the GIL at every poll and then waits up to the switch interval to get it back from
    a busy thread: 5 ms by default, several times a query, so on a loaded machine answering fell seconds behind
    during a refresh; at 0.5 ms it keeps up.
    """
    global _busy, _saved_interval
    with _interval_lock:
        if not _busy:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, _BUSY_SWITCH_INTERVAL))
        _busy += 1
    try:
        yield
    finally:
        with _interval_lock:
            _busy -= 1
            if not _busy:
                sys.setswitchinterval(_saved_interval)


_BUSY_SWITCH_INTERVAL = 0.0005
_interval_lock = threading.Lock()
_busy = 0
_saved_interval = 0.005


def read_list(path: Path, shown_as: str) -> ListFile:
    """Parse the list at ``path``; raises OSError if it cannot be read. Logs one summary line (a WARNING when
    the list gives no entries: a list that silently blocks nothing is a broken list)."""
    with beside_the_loop():
        return _read_list(path, shown_as)


def _read_list(path: Path, shown_as: str) -> ListFile:
    from ztdns.policy.rpz import is_rpz, read_rpz

    if is_rpz(path):
        parsed = read_rpz(path, shown_as)
    else:
        tally = Tally()
        lines = _lines(path)
        tally.lines = len(lines)
        groups, rest = _bulk(lines, tally)
        free_in_pieces(lines)
        regexes: list[str] = []
        for line in rest:
            hit = _simple(line)
            for name, bits in _general(line, tally) if hit is None else (hit,):
                (regexes if name[:1] == "/" else groups.setdefault(bits, [])).append(name)
        parsed = ListFile(shown_as, {bits: names for bits, names in groups.items() if names}, tally, regexes=regexes)
    count = parsed.count
    level = logging.INFO if count else logging.WARNING
    log.log(level, "list %s: %d entries; %s", shown_as, count, parsed.tally.summary())
    return parsed


def find_line(path: Path, name: str, bit: int) -> int | None:
    """The first line of the list at ``path`` that gives ``name`` the spec bit ``bit`` (for ``ztdns explain``).

    Re-scans the file rather than keeping a line number per entry: memory matters more than explain speed.
    """
    for number, entry, bits in scan(_lines(path), Tally()):
        if entry == name and bits & bit:
            return number
    return None
