"""Compile policies into name tables, and decide queries against an identity's view of them.

A compiled policy is one dict from a *base name* to a small integer, the id of the set of rules hanging from
that name (its "combo"); ``entries[id]`` holds that set split by where it applies:

    exact  rules that match the base name itself           (``example.com``)
    child  rules that match names one label below it       (``*.example.com``, ``**.example.com``)
    below  rules that match names two or more labels below (``**.example.com``)

Deciding ``a.b.example.com`` looks up the name itself (``exact``), its parent (``child``) and every further
ancestor up to the root (``below``): one dict lookup per label, however many rules there are. Combos are
interned, so a million list entries share a handful of small ints and no per-entry objects exist beyond the
name strings; a list file's parsed dict becomes the policy's table in place when nothing else needs it.

Precedence (docs/policy.md, "Precedence"): every rule has an effect (deny, exception, allow) and denies and
exceptions a rank. Across every policy of a view, the strongest matching deny is cancelled by a matching
exception of a stronger rank; a deny that stands decides; otherwise the first matching allow; otherwise the
default deny. An exception never allows by itself. Of several matching rules of one rank, the one reported is
from the first policy in the identity's order, then the most specific name, then config rules before lists.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dns.rdatatype

from ztdns.config import located
from ztdns.config.locate import format_loc
from ztdns.config.policy import rewrite_target
from ztdns.patterns import Pattern, Scope, parse_pattern
from ztdns.policy.lists import EntryKind, ListFile, LocalData, Spec, Tally, find_line, read_list
from ztdns.policy.schedule import Schedule
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

    __slots__ = ("blocked_response", "entries", "include_rule_text", "local", "name", "rules", "table")

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
        self.table: dict[str, int] = {}  # base name -> combo id
        self.entries: dict[int, _Entry] = {}  # combo id -> the combo's rules by where they apply
        self.rules: list[_Rule] = []


class _Rule:
    """A config rule, or one spec (scope, kind, action) of one list file in one policy, shared by its entries."""

    __slots__ = (
        "bit",
        "decision",
        "effect",
        "key",
        "local",
        "order",
        "path",
        "policy",
        "ports",
        "qtypes",
        "rank",
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
        ports: PortScope = (),
    ) -> None:
        self.policy = policy
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
        self.decision = None if pattern is None else self._decision(f"{self.verb}{pattern}")

    def _decision(self, text: str) -> Decision:
        policy = self.policy
        return Decision(
            self.effect != DENY,
            policy.name,
            text,
            self.source,
            self.response,
            policy.include_rule_text,
            self.local,
            self.ports,
        )

    def decision_for(self, base: str) -> Decision:
        if self.decision is not None:
            return self.decision
        return self._decision(f"{self.verb}{Pattern(self.scope, base)}")


@dataclass(frozen=True, slots=True)
class _Entry:
    """A combo's rules by where they apply, denies first (see the module docstring)."""

    exact: tuple[_Rule, ...]
    child: tuple[_Rule, ...]
    below: tuple[_Rule, ...]
    root: tuple[_Rule, ...]  # for the root name itself, where '**' applies too

    @classmethod
    def of(cls, rules: frozenset[_Rule]) -> _Entry:
        ordered = sorted(rules, key=lambda rule: (rule.effect, rule.rank, rule.order))

        def where(*scopes: Scope) -> tuple[_Rule, ...]:
            return tuple(rule for rule in ordered if rule.scope in scopes)

        return cls(
            where(Scope.EXACT),
            where(Scope.ONE_LABEL, Scope.ANY_DEPTH),
            where(Scope.ANY_DEPTH),
            where(Scope.EXACT, Scope.ANY_DEPTH),
        )


# What a lookup found: the strongest deny, the strongest exception and the first allow, each with its base name.
Match = tuple["_Rule | None", str, "_Rule | None", str, "_Rule | None", str]


class View:
    """One identity's compiled policies; :meth:`decide` is on the query hot path."""

    __slots__ = ("_default", "_floor", "_tables", "identity", "policies")

    def __init__(self, identity: str, policies: Iterable[CompiledPolicy]) -> None:
        self.identity = identity
        self.policies = tuple(policies)
        first = self.policies[0]
        self._default = Decision(
            False, first.name, DEFAULT_DENY, None, first.blocked_response, first.include_rule_text, first.local
        )
        self._tables = tuple((policy.table.get, policy.entries) for policy in self.policies)
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
        for get, entries in self._tables:
            suffix = name
            depth = 0  # labels between the name and the suffix looked up
            start = 0
            while True:
                combo = get(suffix)
                if combo is not None:
                    entry = entries[combo]
                    if depth == 0:
                        rules = entry.exact if name else entry.root
                    else:
                        rules = entry.child if depth == 1 else entry.below
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

    @property
    def default(self) -> Decision:
        return self._default


class _PolicyBuilder:
    """Fills one CompiledPolicy's table, interning combos (sets of rules) to small ids.

    The biggest list's parsed dict becomes the table in place: its bit sets (positive ints) are its combo ids.
    Combos made by merging get negative ids, so they never collide with those.
    """

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.combos: dict[int, frozenset[_Rule]] = {}
        self.ids: dict[frozenset[_Rule], int] = {}
        self.merged: dict[tuple[int | None, frozenset[_Rule]], int] = {}

    def intern(self, combo: frozenset[_Rule]) -> int:
        found = self.ids.get(combo)
        if found is None:
            found = self.ids[combo] = -1 - len(self.ids)
            self.combos[found] = combo
        return found

    def adopt(self, entries: dict[str, int], rules_by_bits: Callable[[int], frozenset[_Rule]]) -> None:
        """Make a list's parsed dict the (still empty) table, in place: its bit sets become combo ids."""
        for bits in set(entries.values()):
            self.combos[bits] = rules_by_bits(bits)
        self.policy.table = entries

    def add(self, base: str, rules: frozenset[_Rule]) -> None:
        table = self.policy.table
        old = table.get(base)
        key = (old, rules)
        combo = self.merged.get(key)
        if combo is None:
            combo = self.merged[key] = self.intern(rules if old is None else self.combos[old] | rules)
        table[base] = combo

    def finish(self) -> CompiledPolicy:
        self.policy.entries = {combo: _Entry.of(rules) for combo, rules in self.combos.items()}
        return self.policy


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
) -> CompiledPolicy:
    policy = CompiledPolicy(name, config)
    in_force = None if config.schedule is None else schedules[config.schedule]
    builder = _PolicyBuilder(policy)
    written: list[tuple[str, _Rule]] = []
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
            pattern = parse_pattern(text)
            key = f"policies.{name}.{action}[{index}]"
            schedule = in_force if isinstance(rule, str) or rule.schedule is None else schedules[rule.schedule]
            ports = () if isinstance(rule, str) or rule.ports is None else tuple(map(parse_port, rule.ports))
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
    sources: list[tuple[ListFile, Path, Callable[[int], frozenset[_Rule]]]] = []
    for deny_list, path, resolved, loc in _list_sources(name, config, root):
        key = format_loc(loc)
        parsed = lists[resolved]
        list_rules: list[_Rule] = []
        for index, spec in enumerate(parsed.specs):
            effect, rank = _list_effect(deny_list, spec.kind)
            where = resolved if parsed.lines_known else None
            bit = 1 << index
            entry_rule = _Rule(policy, effect, rank, spec.scope, key, source=path, path=where, bit=bit, spec=spec)
            entry_rule.schedule = in_force
            list_rules.append(entry_rule)
        sources.append((parsed, resolved, _rules_by_bits(list_rules)))
    if sources:
        # The biggest list becomes the table itself; it is copied first unless this is its last user.
        biggest = max(range(len(sources)), key=lambda i: len(sources[i][0].entries))
        parsed, resolved, rules_by_bits = sources.pop(biggest)
        uses[resolved] -= 1
        builder.adopt(dict(parsed.entries) if uses[resolved] else parsed.entries, rules_by_bits)
    for parsed, resolved, rules_by_bits in sources:
        for base, bits in parsed.entries.items():
            builder.add(base, rules_by_bits(bits))
        uses[resolved] -= 1
        if not uses[resolved]:
            parsed.entries = {}  # merged for its last user: free it now, not when every policy is compiled
    for base, config_rule in written:
        builder.add(base, frozenset((config_rule,)))
    compiled = builder.finish()
    log.info("policy %s: %d names, %d rules", name, len(compiled.table), len(compiled.rules))
    return compiled


def _qtypes(names: list[str] | None) -> frozenset[int] | None:
    if names is None:
        return None
    return frozenset(int(dns.rdatatype.from_text(name)) for name in names)


def _list_sources(
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
    uses: Counter[Path] = Counter()
    lists: dict[Path, ListFile] = {}
    for name, policy_config in config.policies.items():
        for _, path, resolved, key in _list_sources(name, policy_config, config):
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
    schedules = {name: Schedule(name, schedule) for name, schedule in config.schedules.items()}
    policies = {
        name: _compile_policy(name, policy_config, lists, uses, config, schedules)
        for name, policy_config in config.policies.items()
    }
    return {
        identity: View(identity, (policies[name] for name in identity_config.policies))
        for identity, identity_config in config.identities.items()
    }


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
            line = find_line(rule.path, base, rule.bit)
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
