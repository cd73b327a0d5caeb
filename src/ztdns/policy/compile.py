"""Compile policies into name tables, and decide queries against an identity's view of them.

A compiled policy is one table from a *base name* to the set of rules hanging from that name (an ``_Entry``,
interned: a million list entries share a handful of them), split by where the rules apply:

    exact  rules that match the base name itself           (``example.com``)
    child  rules that match names one label below it       (``*.example.com``, ``**.example.com``)
    below  rules that match names two or more labels below (``**.example.com``)

Deciding ``a.b.example.com`` looks up the name itself (``exact``), its parent (``child``) and every further
ancestor up to the root (``below``): one dict lookup per label, however many rules there are.

The table is a few dicts (shards), a name's shard chosen by its hash, each of at most ~16 K names: a list
feed is compiled in a thread beside the event loop that answers, and growing or freeing one dict of millions
of names is one C call that holds the GIL for ~100 ms, a shard's about a millisecond. The dicts map names to
an entry's index (strings and ints: nothing the garbage collector walks), and rules do not refer back to their
policy (no reference cycle): a replaced table is freed by :func:`release_tables`, in pieces.

Building the table touches each list name about once: names are grouped by the rules they stand for; groups
whose rules decide alike (same effect, rank, scope and answer: two plain deny lists) go into one set of shards,
the first list's entry winning (it is the one a decision would report anyway); only names in groups that
decide differently are merged one by one, found by set intersections of the shards' keys.

Precedence (docs/policy.md, "Precedence"): every rule has an effect (deny, exception, allow) and denies and
exceptions a rank. Across every policy of a view, the strongest matching deny is cancelled by a matching
exception of a stronger rank; a deny that stands decides; otherwise the first matching allow; otherwise the
default deny. An exception never allows by itself. Of several matching rules of one rank, the one reported is
from the first policy in the identity's order, then the most specific name, then config rules before lists.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import dns.rdatatype

from ztdns.config import located
from ztdns.config.locate import format_loc
from ztdns.config.policy import rewrite_target
from ztdns.name_regex import RegexSet, is_regex
from ztdns.patterns import Pattern, Scope, parse_pattern
from ztdns.policy.lists import (
    EntryKind,
    ListFile,
    LocalData,
    Network,
    Spec,
    Tally,
    beside_the_loop,
    find_line,
    free_in_pieces,
    read_list,
)
from ztdns.policy.schedule import Schedule

try:
    from ztdns.policy._nametable import NameTable, build
except ImportError:  # built without a C compiler: tables are dicts only
    NameTable = build = None  # type: ignore[assignment,misc]
from ztdns.policy.sources import is_feed, source_path
from ztdns.wire.grant_scope import PortScope, parse_port

if TYPE_CHECKING:
    from ztdns.config import Config
    from ztdns.config.policy import PolicyConfig

log = logging.getLogger("ztdns.policy")

# "drop" and "local" (answer with local data) come from RPZ actions, not from a policy's setting.
BlockedResponse = Literal["nxdomain", "nodata", "refused", "drop", "local"]

# Effects and ranks (lower is stronger); the table in docs/policy.md, "Precedence", is the contract.
DENY, EXCEPT, ALLOW = 0, 1, 2
RANK_WRITTEN_DENY = 0  # 'deny' in the policy: beats everything
RANK_WRITTEN_EXCEPTION = 1  # 'except' in the policy, '@@...$important' in a list
RANK_IMPORTANT_DENY = 2  # '||x^$important' in a deny list
RANK_LIST_EXCEPTION = 3  # '@@||x^' in any list, RPZ PASSTHRU
RANK_LIST_DENY = 4  # deny list entries; 'deny' rules marked overridable
_NO_EXCEPTION = 99
_VERBS = ("deny:", "except:", "allow:")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check, with everything the response and the logs need."""

    allowed: bool
    policy: str  # name of the policy whose rule decided (default deny: the identity's first policy)
    rule: str  # "deny:**.ads.example", "allow:example.com", "default-deny"
    source: str | None  # None for rules written in the config; the list file path for list entries
    blocked_response: BlockedResponse  # from the deciding policy, or the deciding RPZ entry's action
    include_rule_text: bool  # from the deciding policy
    local: LocalData | None = None  # the answer to give for blocked_response "local"
    ports: PortScope = ()  # an allow's grant scope, (protocol, port) pairs; empty: every port

    def ede_text(self) -> str:
        """EXTRA-TEXT for the Extended DNS Error: ``policy=web rule=deny:**.ads.example [list=ads.txt]``."""
        text = f"policy={self.policy} rule={self.rule}"
        return text if self.source is None else f"{text} list={self.source}"


DEFAULT_DENY = "default-deny"


class CompiledPolicy:
    """One policy's name table. Shared by every identity that uses the policy."""

    __slots__ = (
        "addresses",
        "blocked_response",
        "entries",
        "include_rule_text",
        "local",
        "name",
        "regexes",
        "rules",
        "table",
    )

    def __init__(self, name: str, config: PolicyConfig) -> None:
        self.name = name
        # Sinkholes and block pages are local data: one answer path for them, RPZ local data and rewrites.
        self.blocked_response: BlockedResponse = "local"
        self.local: LocalData | None = None
        if config.blocked_response == "sinkhole":
            self.local = LocalData(addresses=tuple(config.sinkhole))
        elif config.blocked_response == "cname":
            self.local = LocalData(cname=config.block_cname)
        else:
            self.blocked_response = config.blocked_response
        self.include_rule_text = config.include_rule_text
        # Base name -> the rules hanging from it, by where they apply: in shards chosen by the name's hash
        # (see _shard_count), so that building and freeing a table of millions of names is many short C calls.
        self.table: Table = ({},)
        self.entries: tuple[_Entry, ...] = ()
        self.regexes: _Regexes | None = None
        self.addresses: list[tuple[Network, _Rule]] = []  # RPZ-IP triggers of its deny lists
        self.rules: list[_Rule] = []


class _Rule:
    """A config rule, or one spec (scope, kind, action) of one list file in one policy, shared by its entries.

    It does not refer back to its policy: no reference cycle, so a replaced table is freed when the last
    reference goes (by :func:`release_tables`, in pieces), not by a collection of the whole heap."""

    __slots__ = (
        "bit",
        "decision",
        "effect",
        "include_rule_text",
        "key",
        "local",
        "order",
        "path",
        "policy_name",
        "ports",
        "qtypes",
        "rank",
        "regex",
        "response",
        "schedule",
        "scope",
        "source",
        "verb",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        effect: int,
        rank: int,
        scope: Scope,
        key: str,
        *,
        pattern: Pattern | None = None,
        qtypes: frozenset[int] | None = None,
        source: str | None = None,
        path: Path | None = None,
        bit: int = 0,
        spec: Spec | None = None,
        rewrite: LocalData | None = None,
        schedule: Schedule | None = None,
        regex: str | None = None,
        label: str | None = None,
        ports: PortScope = (),
    ) -> None:
        self.policy_name = policy.name
        self.include_rule_text = policy.include_rule_text
        self.regex = regex  # '/pattern/' of a regex rule (matched by ztdns.name_regex, not by the table)
        self.ports = ports
        self.schedule = schedule  # None: always in force
        self.effect = effect
        self.rank = rank
        self.scope = scope
        self.key = key  # config key: 'policies.web.deny[2]' or 'policies.web.deny_lists[0]'
        self.qtypes = qtypes  # None: every query type
        self.source = source
        self.path = path  # the list file, for explain's re-scan (None when lines cannot be found again)
        self.bit = bit  # the list entry bit this rule stands for
        self.order = len(policy.rules)  # config rules first, then list files
        policy.rules.append(self)
        action = None if spec is None or effect != DENY else spec.action
        self.response: BlockedResponse = policy.blocked_response if action is None else action  # type: ignore[assignment]
        self.local = policy.local if action is None and effect == DENY else None if spec is None else spec.local
        if rewrite is not None:
            self.response, self.local = "local", rewrite
        # Config rules have one fixed text, so their Decision is built once; a list rule's text names the
        # matched entry, so it is built on a hit.
        self.verb = "rewrite:" if rewrite is not None else _VERBS[effect]
        text = label or regex or pattern  # label: what an RPZ-IP trigger's decision shows
        self.decision = None if text is None else self._decision(f"{self.verb}{text}")

    def _decision(self, text: str) -> Decision:
        return Decision(
            self.effect != DENY,
            self.policy_name,
            text,
            self.source,
            self.response,
            self.include_rule_text,
            self.local,
            self.ports,
        )

    def decision_for(self, base: str) -> Decision:
        if self.decision is not None:
            return self.decision
        return self._decision(f"{self.verb}{Pattern(self.scope, base)}")


def _precedence(rule: _Rule) -> tuple[int, int, int]:
    """The order :meth:`View.match` expects rules in: denies, exceptions, allows; by rank; config rules first."""
    return rule.effect, rule.rank, rule.order


class _Regexes:
    """A policy's ``/regex/`` rules, matched together in time linear in the name (:mod:`ztdns.name_regex`).

    They apply to the name itself (like an exact rule) and join its table entry's rules there.
    """

    __slots__ = ("matcher", "rules")

    def __init__(self, rules: list[_Rule]) -> None:
        self.rules = tuple(rules)
        self.matcher = RegexSet(rule.regex or "" for rule in rules)

    def add_hits(self, name: str, rules: tuple[_Rule, ...] | None) -> tuple[_Rule, ...] | None:
        hits = self.matcher.search(name)
        if not hits:
            return rules
        return tuple(sorted((*(rules or ()), *(self.rules[index] for index in hits)), key=_precedence))


class _AddressTriggers:
    """The RPZ-IP triggers of a view: the longest prefix holding an address decides, as in RPZ."""

    __slots__ = ("_by_version",)

    def __init__(self, triggers: Iterable[tuple[Network, _Rule]]) -> None:
        tables: dict[int, dict[int, dict[int, _Rule]]] = {4: {}, 6: {}}  # version -> length -> prefix -> rule
        for network, rule in triggers:
            prefix = int(network.network_address) >> (network.max_prefixlen - network.prefixlen)
            tables[network.version].setdefault(network.prefixlen, {}).setdefault(prefix, rule)  # first one wins
        self._by_version = {version: sorted(table.items(), reverse=True) for version, table in tables.items()}

    def match(self, address: str) -> _Rule | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value, bits = int(ip), ip.max_prefixlen
        for length, prefixes in self._by_version[ip.version]:
            rule = prefixes.get(value >> (bits - length))
            if rule is not None and (rule.schedule is None or rule.schedule.active()):
                return rule
        return None


class _Entry:
    """A set of rules hanging from one name, by where they apply, denies first (see the module docstring)."""

    __slots__ = ("below", "child", "exact", "root", "rules")

    def __init__(self, rules: frozenset[_Rule]) -> None:
        self.rules = rules
        ordered = sorted(rules, key=_precedence)

        def where(*scopes: Scope) -> tuple[_Rule, ...]:
            return tuple(rule for rule in ordered if rule.scope in scopes)

        self.exact = where(Scope.EXACT)
        self.child = where(Scope.ONE_LABEL, Scope.ANY_DEPTH)
        self.below = where(Scope.ANY_DEPTH)
        self.root = where(Scope.EXACT, Scope.ANY_DEPTH)  # for the root name itself, where '**' applies too


class Shard(Protocol):
    """Base name -> index of its entry in CompiledPolicy.entries: a dict, or a table the process compiling a
    refresh wrote (:mod:`ztdns.policy.apart`), looked up in place."""

    def get(self, name: str, /) -> int | None: ...
    def __len__(self) -> int: ...


Table = tuple[Shard, ...]  # a name's shard is chosen by its hash (one shard: no hash() call)

# What a lookup found: the strongest deny, the strongest exception and the first allow, each with its base name.
Match = tuple["_Rule | None", str, "_Rule | None", str, "_Rule | None", str]


class View:
    """One identity's compiled policies; :meth:`decide` is on the query hot path."""

    __slots__ = ("_default", "_floor", "_tables", "addresses", "identity", "policies")

    def __init__(self, identity: str, policies: Iterable[CompiledPolicy]) -> None:
        self.identity = identity
        self.policies = tuple(policies)
        first = self.policies[0]
        self._default = Decision(
            False, first.name, DEFAULT_DENY, None, first.blocked_response, first.include_rule_text, first.local
        )
        self._tables = tuple(
            (
                policy.table[0].get,
                tuple(shard.get for shard in policy.table),
                len(policy.table) - 1,
                policy.entries,
                policy.regexes,
            )
            for policy in self.policies
        )
        triggers = [trigger for policy in self.policies for trigger in policy.addresses]
        self.addresses = _AddressTriggers(triggers) if triggers else None
        # A deny ranked stronger than every exception of the view decides as soon as it is found.
        self._floor = min(
            (rule.rank for policy in self.policies for rule in policy.rules if rule.effect == EXCEPT),
            default=_NO_EXCEPTION,
        )

    def decide(self, name: str, qtype: int) -> Decision:
        """Decide a query for ``name`` (lower-case, no trailing dot, "" for the root) and type ``qtype``."""
        deny, deny_base, exception, _, allow, allow_base = self.match(name, qtype)
        if deny is not None and (exception is None or deny.rank < exception.rank):
            return deny.decision_for(deny_base)
        if allow is not None:
            return allow.decision_for(allow_base)
        return self._default

    def match(self, name: str, qtype: int) -> Match:
        """The rules that match, for :meth:`decide` and :func:`explain` (see the module docstring)."""
        floor = self._floor
        deny = exception = allow = None
        deny_base = exception_base = allow_base = ""
        for get, gets, mask, entries, regexes in self._tables:
            suffix = name
            depth = 0  # labels between the name and the suffix looked up
            start = 0
            while True:
                # One shard (a table of fewer than _SHARD_NAMES names): no hash() call.
                index = gets[hash(suffix) & mask](suffix) if mask else get(suffix)
                rules = None
                if depth == 0:
                    if index is not None:
                        entry = entries[index]
                        rules = entry.exact if name else entry.root
                    if regexes is not None:
                        rules = regexes.add_hits(name, rules)
                elif index is not None:
                    entry = entries[index]
                    rules = entry.child if depth == 1 else entry.below
                if rules is not None:
                    for rule in rules:
                        qtypes = rule.qtypes
                        if qtypes is None or qtype in qtypes:
                            schedule = rule.schedule
                            if schedule is not None and not schedule.active():
                                continue
                            effect = rule.effect
                            if effect == DENY:
                                if rule.rank < floor:
                                    return rule, suffix, None, "", None, ""
                                if deny is None or rule.rank < deny.rank:
                                    deny, deny_base = rule, suffix
                            elif effect == EXCEPT:
                                if exception is None or rule.rank < exception.rank:
                                    exception, exception_base = rule, suffix
                            else:
                                # Rewrites (allows with local data) win over plain allows.
                                if allow is None or (rule.local is not None and allow.local is None):
                                    allow, allow_base = rule, suffix
                                break  # allows sort last: nothing after a matching allow matters
                if not suffix:
                    break
                dot = name.find(".", start)
                if dot < 0:
                    suffix = ""
                else:
                    start = dot + 1
                    suffix = name[start:]
                depth += 1
        return deny, deny_base, exception, exception_base, allow, allow_base

    def decide_addresses(self, addresses: Iterable[str]) -> Decision | None:
        """The decision blocking an answer with these addresses (RPZ-IP), or None when none is listed (or a
        PASSTHRU trigger exempts it)."""
        if self.addresses is None:
            return None
        for address in addresses:
            rule = self.addresses.match(address)
            if rule is not None and rule.effect == DENY:
                return rule.decision
        return None

    @property
    def default(self) -> Decision:
        return self._default


class _Entries:
    """Interns the entries of one policy: one ``_Entry`` per distinct set of rules, merges memoised.

    A table maps names to an entry's index in :attr:`all`, not to the entry: a dict of strings and ints holds
    nothing the garbage collector tracks, so a collection never walks the millions of names of a table.
    """

    def __init__(self) -> None:
        self.all: list[_Entry] = []
        self.interned: dict[frozenset[_Rule], int] = {}
        self.merged: dict[tuple[int, int], int] = {}

    def of(self, rules: frozenset[_Rule]) -> int:
        found = self.interned.get(rules)
        if found is None:
            found = self.interned[rules] = len(self.all)
            self.all.append(_Entry(rules))
        return found

    def merge(self, old: int | None, new: int) -> int:
        if old is None or old == new:
            return new
        key = (old, new)
        found = self.merged.get(key)
        if found is None:
            found = self.merged[key] = self.of(self.all[old].rules | self.all[new].rules)
        return found


def _likeness(rules: frozenset[_Rule]) -> frozenset[Hashable]:
    """What decides between rules apart from their order and origin: of two groups alike, the first shadows
    the second completely (see the module docstring)."""
    return frozenset(
        (rule.effect, rule.rank, rule.scope, rule.response, rule.local, rule.qtypes, id(rule.schedule))
        for rule in rules
    )


def _table(groups: list[tuple[list[str], int]], entries: _Entries) -> list[dict[str, int]]:
    """The shards of every group's names (in policy order: earlier groups first) to their merged entries."""
    count = _shard_count(sum(len(names) for names, _ in groups))
    alike: dict[Hashable, list[tuple[list[str], int]]] = {}
    for group in groups:
        alike.setdefault(_likeness(entries.all[group[1]].rules), []).append(group)
    tables = []
    for members in alike.values():
        members.reverse()  # later values win: the first list's entry must be the one kept
        shards: list[dict[str, int]] = [{} for _ in range(count)]
        for names, entry in members:
            _fill(shards, names, entry)
        tables.append(shards)
    if not tables:
        return [{} for _ in range(count)]
    tables.sort(key=lambda shards: sum(map(len, shards)), reverse=True)
    table = tables[0]
    merge = entries.merge
    for other in tables[1:]:
        for mine, theirs in zip(table, other, strict=True):
            for name in mine.keys() & theirs.keys():
                theirs[name] = merge(mine[name], theirs[name])
            mine.update(theirs)
    return table


def _flat_table(groups: list[tuple[list[str], int]], written: list[tuple[str, _Rule]], entries: _Entries) -> Shard:
    """The table of :func:`_table` and the config rules (``written``) as one flat buffer (``_nametable``, C), built
    straight from the groups without a dict: a name that an earlier group of the same likeness gave keeps what
    it holds (as :func:`_table`: the first alike list wins), and otherwise gets the merged entry; a config rule
    always merges. Which likenesses an entry holds is remembered per merged entry: a later group whose rules are
    merely covered by another likeness's still merges, as in :func:`_table`, so that ``explain`` names the same
    line (tests/policy/test_table_shards.py)."""
    assert build is not None and NameTable is not None  # apart.py compiles apart only with the extension
    lists = len(groups)
    likeness = functools.cache(lambda entry: _likeness(entries.all[entry].rules))
    held_likenesses: dict[int, frozenset[frozenset[Hashable]]] = {}

    def resolve(held: int, given: int, group: int) -> int:
        if group >= lists:
            return entries.merge(held, given)
        mine = held_likenesses.get(held) or frozenset((likeness(held),))
        theirs = likeness(given)
        if theirs in mine:
            return held
        merged = entries.merge(held, given)
        held_likenesses[merged] = held_likenesses.get(merged, frozenset()) | mine | {theirs}
        return merged

    config = [([base], entries.of(frozenset((rule,)))) for base, rule in written]
    return NameTable(build([*groups, *config], resolve))


def _fill(shards: list[dict[str, int]], names: list[str], entry: int) -> None:
    """Map every name to ``entry`` in its shard. One shard: in C, a slice at a time (one ``dict.update`` of
    millions of names would hold the GIL for a second, and the compile runs in a thread beside the event loop
    that answers); several: a Python loop, which hands the GIL back by itself."""
    if len(shards) == 1:
        shard = shards[0]
        for start in range(0, len(names), _SLICE):
            shard.update(zip(names[start : start + _SLICE], repeat(entry)))
        return
    mask = len(shards) - 1
    for name in names:
        shards[hash(name) & mask][name] = entry


def _shard_count(names: int) -> int:
    """Shards for a table of about ``names`` names: a power of two (a name's shard is its hash's low bits),
    enough that each shard holds at most ``_SHARD_NAMES`` on average. Growing a dict resizes it in one C call
    that holds the GIL: ~70 ms for a dict of 1.4 M names, ~1 ms for one shard; so is freeing it."""
    count = 1
    while count * _SHARD_NAMES < names:
        count *= 2
    return count


_SHARD_NAMES = 16384
_SLICE = 8192  # names per C call when a one-shard table is built (about a millisecond each)


# (effect, rank) of a list entry by the list's sense (deny list?) and the entry's kind.
_LIST_EFFECTS = {
    (True, EntryKind.PLAIN): (DENY, RANK_LIST_DENY),
    (True, EntryKind.IMPORTANT): (DENY, RANK_IMPORTANT_DENY),
    (False, EntryKind.PLAIN): (ALLOW, 0),
    (False, EntryKind.IMPORTANT): (ALLOW, 0),
}


def _list_effect(deny_list: bool, kind: EntryKind) -> tuple[int, int]:
    if kind is EntryKind.EXCEPTION:
        return EXCEPT, RANK_LIST_EXCEPTION
    if kind is EntryKind.IMPORTANT_EXCEPTION:
        return EXCEPT, RANK_WRITTEN_EXCEPTION
    return _LIST_EFFECTS[deny_list, kind]


def _rules_by_bits(rules: list[_Rule]) -> Callable[[int], frozenset[_Rule]]:
    """bits -> the set of rules those bits stand for, memoised (a list has few distinct bit sets)."""
    memo: dict[int, frozenset[_Rule]] = {}

    def lookup(bits: int) -> frozenset[_Rule]:
        found = memo.get(bits)
        if found is None:
            found = memo[bits] = frozenset(rule for rule in rules if bits & rule.bit)
        return found

    return lookup


def _compile_policy(
    name: str,
    config: PolicyConfig,
    lists: dict[Path, ListFile],
    uses: Counter[Path],
    root: Config,
    schedules: dict[str, Schedule],
    flat: bool,
) -> CompiledPolicy:
    policy = CompiledPolicy(name, config)
    in_force = None if config.schedule is None else schedules[config.schedule]
    written: list[tuple[str, _Rule]] = []
    regex_rules: list[_Rule] = []
    for effect, action, rules in (
        (DENY, "deny", config.deny),
        (EXCEPT, "except", config.exceptions),
        (ALLOW, "allow", config.allow),
    ):
        for index, rule in enumerate(rules):
            text, qtypes = (rule, None) if isinstance(rule, str) else (rule.pattern, _qtypes(rule.qtypes))
            rank = RANK_WRITTEN_DENY if effect == DENY else RANK_WRITTEN_EXCEPTION if effect == EXCEPT else 0
            if not isinstance(rule, str) and rule.overridable:
                rank = RANK_LIST_DENY
            key = f"policies.{name}.{action}[{index}]"
            schedule = in_force if isinstance(rule, str) or rule.schedule is None else schedules[rule.schedule]
            ports = () if isinstance(rule, str) or rule.ports is None else tuple(map(parse_port, rule.ports))
            if is_regex(text):
                regex_rules.append(
                    _Rule(
                        policy,
                        effect,
                        rank,
                        Scope.EXACT,
                        key,
                        regex=text,
                        qtypes=qtypes,
                        schedule=schedule,
                        ports=ports,
                    )
                )
                continue
            pattern = parse_pattern(text)
            compiled_rule = _Rule(
                policy, effect, rank, pattern.scope, key, pattern=pattern, qtypes=qtypes, schedule=schedule, ports=ports
            )
            written.append((pattern.base, compiled_rule))
    for text, target in config.rewrites.items():
        cname, addresses = rewrite_target(target)
        pattern = parse_pattern(text)
        rewrite = LocalData(cname, addresses)
        key = f"policies.{name}.rewrites[{text!r}]"
        compiled_rule = _Rule(policy, ALLOW, 0, pattern.scope, key, pattern=pattern, rewrite=rewrite, schedule=in_force)
        written.append((pattern.base, compiled_rule))
    entries = _Entries()
    groups: list[tuple[list[str], int]] = []
    for deny_list, path, resolved, loc in list_sources(name, config, root):
        key = format_loc(loc)
        parsed = lists[resolved]
        list_rules: list[_Rule] = []
        where = resolved if parsed.lines_known else None
        for index, spec in enumerate(parsed.specs):
            effect, rank = _list_effect(deny_list, spec.kind)
            bit = 1 << index
            entry_rule = _Rule(policy, effect, rank, spec.scope, key, source=path, path=where, bit=bit, spec=spec)
            entry_rule.schedule = in_force
            list_rules.append(entry_rule)
        rules_by_bits = _rules_by_bits(list_rules)
        for network, bit in parsed.addresses if deny_list else ():
            spec = parsed.specs[bit.bit_length() - 1]
            effect, rank = _list_effect(deny_list, spec.kind)
            label = f"rpz-ip:{network}"
            trigger = _Rule(policy, effect, rank, Scope.EXACT, key, source=path, spec=spec, label=label)
            trigger.schedule = in_force
            policy.addresses.append((network, trigger))
        effect, rank = _list_effect(deny_list, EntryKind.PLAIN)
        for regex in parsed.regexes:
            regex_rule = _Rule(policy, effect, rank, Scope.EXACT, key, source=path, path=where, bit=1, regex=regex)
            regex_rule.schedule = in_force
            regex_rules.append(regex_rule)
        groups.extend((names, entries.of(rules_by_bits(bits))) for bits, names in parsed.groups.items())
        uses[resolved] -= 1
    if flat:
        policy.table = (_flat_table(groups, written, entries),)
    else:
        table = _table(groups, entries)
        mask = len(table) - 1
        for base, config_rule in written:
            shard = table[hash(base) & mask]
            shard[base] = entries.merge(shard.get(base), entries.of(frozenset((config_rule,))))
        policy.table = tuple(table)
    del groups
    for resolved, parsed in lists.items():
        if not uses[resolved]:
            # In the tables of all its users: free it now, not when every policy is compiled.
            for names in parsed.groups.values():
                free_in_pieces(names)
            parsed.groups = {}
    policy.entries = tuple(entries.all)
    if regex_rules:
        policy.regexes = _Regexes(regex_rules)
    return policy


def _qtypes(names: list[str] | None) -> frozenset[int] | None:
    if names is None:
        return None
    return frozenset(int(dns.rdatatype.from_text(name)) for name in names)


def list_sources(
    name: str, config: PolicyConfig, root: Config
) -> Iterator[tuple[bool, str, Path, tuple[str | int, ...]]]:
    for deny_list, action, paths in ((True, "deny", config.deny_lists), (False, "allow", config.allow_lists)):
        for index, path in enumerate(paths):
            yield deny_list, path, source_path(root, path), ("policies", name, f"{action}_lists", index)


def compile_views(config: Config) -> dict[str, View]:
    """Compile every policy once (reading each list file once) and return identity name -> View.

    Raises ConfigError naming the policy key and the file when a list file cannot be read. A feed without a
    copy yet (never fetched) is an empty list, with a WARNING.
    """
    with beside_the_loop():
        return _compile_views(config)


def _compile_views(config: Config) -> dict[str, View]:
    lists, uses = read_lists(config)
    policies = compile_policies(config, lists, uses)
    del lists
    _return_freed_memory()
    return views_of(config, policies)


def read_lists(config: Config) -> tuple[dict[Path, ListFile], Counter[Path]]:
    """Every list file the policies use, parsed once, and how many policies use each."""
    uses: Counter[Path] = Counter()
    lists: dict[Path, ListFile] = {}
    for name, policy_config in config.policies.items():
        for _, path, resolved, key in list_sources(name, policy_config, config):
            uses[resolved] += 1
            if resolved not in lists:
                try:
                    lists[resolved] = read_list(resolved, path)
                except OSError as exc:
                    if is_feed(path) and isinstance(exc, FileNotFoundError):
                        log.warning("list %s: no copy yet (not fetched successfully so far): 0 entries", path)
                        lists[resolved] = ListFile(path, {}, Tally())
                        continue
                    reason = exc.strerror or str(exc)
                    raise located(config, key, f"cannot read list file {str(resolved)!r}: {reason}") from None
    return lists, uses


def compile_policies(
    config: Config,
    lists: dict[Path, ListFile],
    uses: Counter[Path],
    *,
    summary: bool = True,
    flat: bool = False,
) -> dict[str, CompiledPolicy]:
    """Every policy of ``config`` compiled from the parsed ``lists`` (whose names are freed as they are used);
    ``summary``: log each policy's size; ``flat``: each table one flat buffer (:func:`_flat_table`, for the
    process compiling a refresh: :mod:`ztdns.policy.apart`) instead of dict shards."""
    schedules = {name: Schedule(name, schedule) for name, schedule in config.schedules.items()}
    policies = {}
    for name, policy_config in config.policies.items():
        policy = policies[name] = _compile_policy(name, policy_config, lists, uses, config, schedules, flat)
        if summary:
            log.info("policy %s: %d names, %d rules", name, sum(map(len, policy.table)), len(policy.rules))
    return policies


def views_of(config: Config, policies: dict[str, CompiledPolicy]) -> dict[str, View]:
    """Identity name -> its view of the compiled ``policies``."""
    return {
        identity: View(identity, (policies[name] for name in identity_config.policies))
        for identity, identity_config in config.identities.items()
    }


def replaced_tables(views: Iterable[View]) -> list[Shard]:
    """The table shards of these views' policies, for :func:`release_tables` once the views are replaced."""
    policies = {id(policy): policy for view in views for policy in view.policies}
    return [shard for policy in policies.values() for shard in policy.table]


def release_tables(shards: list[Shard], patience: float = 30.0) -> None:
    """Free replaced table shards in pieces, emptying ``shards``; run it in a thread.

    Each piece is a C call of about a millisecond, so the event loop gets the GIL between them; the last
    reference to a whole table of millions of names dropped at once would hold it for ~100 ms. A shard still
    referred to elsewhere (a query in flight holding its old view: resolutions end within seconds) is waited
    for, up to ``patience`` seconds for all, and then left to whoever drops it last.

    The names are freed in the order they were stored (a slice of every shard in turn, pausing after each),
    not a shard after another: a shard's names are spread over the whole heap, so the last shard freed would
    empty every memory arena at once (~20 ms of unmapping for 2 M names).
    """
    with beside_the_loop():
        _release(shards, time.monotonic() + patience)


def _release(shards: list[Shard], deadline: float) -> None:
    names: list[list[str]] = []
    while shards:
        # 2 references: the list's and the argument's; more: still in use.
        if sys.getrefcount(shards[-1]) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        shard = shards.pop()
        # A mapped table (ztdns.policy.apart) is unmapped at once, in one short call: nothing to free by pieces.
        if isinstance(shard, dict) and sys.getrefcount(shard) == 2:  # the variable's and the argument's: ours
            stored = list(shard)
            stored.reverse()  # freed from the end: the first stored first
            shard.clear()  # the names live on in ``stored``
            names.append(stored)
        del shard
        time.sleep(_RELEASE_PAUSE)
    step = max(1, _SLICE // max(1, len(names)))
    while names:
        for stored in names:
            del stored[-step:]
        names = [stored for stored in names if stored]
        time.sleep(_RELEASE_PAUSE)
    _return_freed_memory()


# Nothing waits for a release: it pauses after each piece (about half a millisecond of work), so that the event
# loop finds the GIL free instead of taking turns with it; 2 M names take about a second.
_RELEASE_PAUSE = 0.002


def _return_freed_memory() -> None:
    """Give the heap that parsing freed (lines, name lists) back to the system: glibc keeps it otherwise, ~35 MB
    of RSS for 2 M names. Not glibc (no ``malloc_trim``): nothing to do."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a view decides a name the way it does, for ``ztdns explain``."""

    decision: Decision
    key: str | None  # the config key of the deciding rule or list; None for the default deny
    line: int | None  # the list file line that holds the entry (list rules only)
    qtypes: tuple[str, ...] | None  # the deciding rule's query types; None for all
    chain: tuple[str, ...] = ()  # every rule that took part, strongest first: "denied by …", "overridden by …"

    def origin(self) -> str:
        """Where the rule is: ``policies.web.deny[2]``, or ``ads.txt:12 (policies.web.deny_lists[0])``."""
        if self.key is None:
            return "no rule matched (default deny)"
        if self.decision.source is None:
            return self.key
        where = self.decision.source if self.line is None else f"{self.decision.source}:{self.line}"
        return f"{where} ({self.key})"


def _where(rule: _Rule, base: str) -> tuple[int | None, str]:
    """The list line of a rule's entry (None for config rules or when it cannot be found) and its origin text."""
    line = None
    if rule.path is not None:
        try:
            line = find_line(rule.path, rule.regex or base, rule.bit)
        except OSError:
            line = None  # the file changed since it was loaded; the decision still stands
    if rule.source is None:
        return line, rule.key
    return line, f"{rule.source if line is None else f'{rule.source}:{line}'} ({rule.key})"


def explain(view: View, name: str, qtype: int) -> Explanation:
    """Decide like :meth:`View.decide` and say where the deciding rules are written (re-scanning list files)."""
    deny, deny_base, exception, exception_base, allow, allow_base = view.match(name, qtype)
    decision = view.decide(name, qtype)
    chain: list[str] = []
    deciding: tuple[_Rule, str] | None = None
    if deny is not None:
        chain.append(f"denied by {deny.decision_for(deny_base).rule} at {_where(deny, deny_base)[1]}")
        if exception is None or deny.rank < exception.rank:
            deciding = deny, deny_base
    if exception is not None:
        verb = "overridden by" if deny is not None and deciding is None else "exception (nothing to override)"
        if deciding is not None:
            verb = "exception too weak to override it"
        chain.append(f"{verb} {exception.decision_for(exception_base).rule} at {_where(exception, exception_base)[1]}")
    if deciding is None:
        if allow is not None:
            deciding = allow, allow_base
            chain.append(f"allowed by {allow.decision_for(allow_base).rule} at {_where(allow, allow_base)[1]}")
        else:
            chain.append("no allow rule matched: default deny")
    if deciding is None:
        return Explanation(decision, None, None, None, tuple(chain))
    rule, base = deciding
    line, _ = _where(rule, base)
    qtypes = (
        None
        if rule.qtypes is None
        else tuple(sorted(dns.rdatatype.to_text(dns.rdatatype.RdataType(q)) for q in rule.qtypes))
    )
    return Explanation(decision, rule.key, line, qtypes, tuple(chain))
