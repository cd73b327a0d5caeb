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

Deny beats allow: across every policy of a view, any matching deny decides; otherwise the first matching
allow; otherwise the default deny. Of several matching denies (or allows), the one reported is from the first
policy in the identity's order, then the most specific name, then config rules before list entries.
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
from ztdns.patterns import Pattern, Scope, parse_pattern
from ztdns.policy.lists import SCOPE_BITS, ListFile, find_line, read_list

if TYPE_CHECKING:
    from ztdns.config import Config
    from ztdns.config.policy import PolicyConfig

log = logging.getLogger("ztdns.policy")

BlockedResponse = Literal["nxdomain", "nodata", "refused"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check, with everything the response and the logs need."""

    allowed: bool
    policy: str  # name of the policy whose rule decided (default deny: the identity's first policy)
    rule: str  # "deny:**.ads.example", "allow:example.com", "default-deny"
    source: str | None  # None for rules written in the config; the list file path for list entries
    blocked_response: BlockedResponse  # from the deciding policy
    include_rule_text: bool  # from the deciding policy

    def ede_text(self) -> str:
        """EXTRA-TEXT for the Extended DNS Error: ``policy=web rule=deny:**.ads.example [list=ads.txt]``."""
        text = f"policy={self.policy} rule={self.rule}"
        return text if self.source is None else f"{text} list={self.source}"


DEFAULT_DENY = "default-deny"


class CompiledPolicy:
    """One policy's name table. Shared by every identity that uses the policy."""

    __slots__ = ("blocked_response", "entries", "include_rule_text", "name", "rules", "table")

    def __init__(self, name: str, config: PolicyConfig) -> None:
        self.name = name
        self.blocked_response: BlockedResponse = config.blocked_response
        self.include_rule_text = config.include_rule_text
        self.table: dict[str, int] = {}  # base name -> combo id
        self.entries: list[_Entry] = []  # combo id -> the combo's rules by where they apply
        self.rules: list[_Rule] = []


class _Rule:
    """A config rule, or one scope of one list file in one policy (shared by all its entries)."""

    __slots__ = (
        "action",
        "allowed",
        "decision",
        "key",
        "order",
        "path",
        "policy",
        "qtypes",
        "scope",
        "source",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        allowed: bool,
        scope: Scope,
        key: str,
        *,
        pattern: Pattern | None = None,
        qtypes: frozenset[int] | None = None,
        source: str | None = None,
        path: Path | None = None,
    ) -> None:
        self.policy = policy
        self.allowed = allowed
        self.scope = scope
        self.key = key  # config key: 'policies.web.deny[2]' or 'policies.web.deny_lists[0]'
        self.qtypes = qtypes  # None: every query type
        self.source = source
        self.path = path  # the list file, for explain's re-scan
        self.order = len(policy.rules)  # config denies, config allows, deny lists, allow lists
        policy.rules.append(self)
        # Config rules have one fixed text, so their Decision is built once; a list rule's text names the
        # matched entry, so it is built on a hit.
        self.action = "allow:" if allowed else "deny:"
        self.decision = None if pattern is None else self._decision(f"{self.action}{pattern}")

    def _decision(self, text: str) -> Decision:
        policy = self.policy
        return Decision(self.allowed, policy.name, text, self.source, policy.blocked_response, policy.include_rule_text)

    def decision_for(self, base: str) -> Decision:
        if self.decision is not None:
            return self.decision
        return self._decision(f"{self.action}{Pattern(self.scope, base)}")


@dataclass(frozen=True, slots=True)
class _Entry:
    """A combo's rules by where they apply, denies first (see the module docstring)."""

    exact: tuple[_Rule, ...]
    child: tuple[_Rule, ...]
    below: tuple[_Rule, ...]
    root: tuple[_Rule, ...]  # for the root name itself, where '**' applies too

    @classmethod
    def of(cls, rules: frozenset[_Rule]) -> _Entry:
        ordered = sorted(rules, key=lambda rule: (rule.allowed, rule.order))

        def where(*scopes: Scope) -> tuple[_Rule, ...]:
            return tuple(rule for rule in ordered if rule.scope in scopes)

        return cls(
            where(Scope.EXACT),
            where(Scope.ONE_LABEL, Scope.ANY_DEPTH),
            where(Scope.ANY_DEPTH),
            where(Scope.EXACT, Scope.ANY_DEPTH),
        )


class View:
    """One identity's compiled policies; :meth:`decide` is on the query hot path."""

    __slots__ = ("_default", "_tables", "identity", "policies")

    def __init__(self, identity: str, policies: Iterable[CompiledPolicy]) -> None:
        self.identity = identity
        self.policies = tuple(policies)
        first = self.policies[0]
        self._default = Decision(False, first.name, DEFAULT_DENY, None, first.blocked_response, first.include_rule_text)
        self._tables = tuple((policy.table.get, policy.entries) for policy in self.policies)

    def decide(self, name: str, qtype: int) -> Decision:
        """Decide a query for ``name`` (lower-case, no trailing dot, "" for the root) and type ``qtype``."""
        found = self.match(name, qtype)
        if found is None:
            return self._default
        rule, base = found
        return rule.decision_for(base)

    def match(self, name: str, qtype: int) -> tuple[_Rule, str] | None:
        """The deciding rule and the base name it matched under, or None for the default deny."""
        allow: tuple[_Rule, str] | None = None
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
                            if not rule.allowed:
                                return rule, suffix
                            if allow is None:
                                allow = rule, suffix
                            break  # denies sort first: nothing after a matching allow can be a deny
                if not suffix:
                    break
                dot = name.find(".", start)
                if dot < 0:
                    suffix = ""
                else:
                    start = dot + 1
                    suffix = name[start:]
                depth += 1
        return allow

    @property
    def default(self) -> Decision:
        return self._default


class _PolicyBuilder:
    """Fills one CompiledPolicy's table, interning combos (sets of rules) to small ids."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.combos: list[frozenset[_Rule]] = []
        self.ids: dict[frozenset[_Rule], int] = {}
        self.merged: dict[tuple[int | None, frozenset[_Rule]], int] = {}

    def intern(self, combo: frozenset[_Rule]) -> int:
        found = self.ids.get(combo)
        if found is None:
            found = self.ids[combo] = len(self.combos)
            self.combos.append(combo)
        return found

    def adopt(self, entries: dict[str, int], rules_by_bits: Callable[[int], frozenset[_Rule]]) -> None:
        """Make a list's parsed dict the (still empty) table, in place: its scope bits become combo ids."""
        self.combos = [rules_by_bits(bits) for bits in range(8)]
        self.ids = {combo: bits for bits, combo in enumerate(self.combos)}
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
        self.policy.entries = [_Entry.of(combo) for combo in self.combos]
        return self.policy


def _compile_policy(
    name: str, config: PolicyConfig, lists: dict[Path, ListFile], uses: Counter[Path], base_dir: Path
) -> CompiledPolicy:
    policy = CompiledPolicy(name, config)
    builder = _PolicyBuilder(policy)
    written: list[tuple[str, _Rule]] = []
    for allowed, action, rules in ((False, "deny", config.deny), (True, "allow", config.allow)):
        for index, rule in enumerate(rules):
            text, qtypes = (rule, None) if isinstance(rule, str) else (rule.pattern, _qtypes(rule.qtypes))
            pattern = parse_pattern(text)
            key = f"policies.{name}.{action}[{index}]"
            compiled_rule = _Rule(policy, allowed, pattern.scope, key, pattern=pattern, qtypes=qtypes)
            written.append((pattern.base, compiled_rule))
    sources: list[tuple[ListFile, Path, Callable[[int], frozenset[_Rule]]]] = []
    for allowed, path, resolved, loc in _list_sources(name, config, base_dir):
        key = format_loc(loc)
        by_scope = {
            bit: _Rule(policy, allowed, scope, key, source=path, path=resolved) for scope, bit in SCOPE_BITS.items()
        }
        sets = [frozenset(rule for bit, rule in by_scope.items() if bits & bit) for bits in range(8)]
        sources.append((lists[resolved], resolved, sets.__getitem__))
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
    for base, config_rule in written:
        builder.add(base, frozenset((config_rule,)))
    compiled = builder.finish()
    log.info("policy %s: %d names, %d rules", name, len(compiled.table), len(compiled.rules))
    return compiled


def _qtypes(names: list[str]) -> frozenset[int]:
    return frozenset(int(dns.rdatatype.from_text(name)) for name in names)


def _resolved(base_dir: Path, path: str) -> Path:
    return (base_dir / path).resolve()


def _list_sources(
    name: str, config: PolicyConfig, base_dir: Path
) -> Iterator[tuple[bool, str, Path, tuple[str | int, ...]]]:
    for allowed, action, paths in ((False, "deny", config.deny_lists), (True, "allow", config.allow_lists)):
        for index, path in enumerate(paths):
            yield allowed, path, _resolved(base_dir, path), ("policies", name, f"{action}_lists", index)


def compile_views(config: Config) -> dict[str, View]:
    """Compile every policy once (reading each list file once) and return identity name -> View.

    Raises ConfigError naming the policy key and the file when a list file cannot be read.
    """
    uses: Counter[Path] = Counter()
    lists: dict[Path, ListFile] = {}
    for name, policy_config in config.policies.items():
        for _, path, resolved, key in _list_sources(name, policy_config, config.base_dir):
            uses[resolved] += 1
            if resolved not in lists:
                try:
                    lists[resolved] = read_list(resolved, path)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    raise located(config, key, f"cannot read list file {str(resolved)!r}: {reason}") from None
    policies = {
        name: _compile_policy(name, policy_config, lists, uses, config.base_dir)
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

    def origin(self) -> str:
        """Where the rule is: ``policies.web.deny[2]``, or ``ads.txt:12 (policies.web.deny_lists[0])``."""
        if self.key is None:
            return "no rule matched (default deny)"
        if self.decision.source is None:
            return self.key
        where = self.decision.source if self.line is None else f"{self.decision.source}:{self.line}"
        return f"{where} ({self.key})"


def explain(view: View, name: str, qtype: int) -> Explanation:
    """Decide like :meth:`View.decide` and say where the deciding rule is written (re-scanning list files)."""
    found = view.match(name, qtype)
    if found is None:
        return Explanation(view.default, None, None, None)
    rule, base = found
    line = None
    if rule.path is not None:
        try:
            line = find_line(rule.path, base, rule.scope)
        except OSError:
            line = None  # the file changed since it was loaded; the decision still stands
    qtypes = (
        None
        if rule.qtypes is None
        else tuple(sorted(dns.rdatatype.to_text(dns.rdatatype.RdataType(q)) for q in rule.qtypes))
    )
    return Explanation(rule.decision_for(base), rule.key, line, qtypes)
