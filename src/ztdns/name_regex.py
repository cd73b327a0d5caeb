"""Regular-expression name rules (``/regex/``) matched in time linear in the name, whatever the patterns.

Python's ``re`` backtracks: two adjacent repeats (``a.*a.*b``) already cost milliseconds on a 253-character
name a client chooses, and nested ones cost years. So patterns are parsed with ``re``'s own parser (the syntax
and meaning are Python's, ``re.search`` on the lower-case name without its final dot) and compiled into one
Thompson NFA per policy, which is run as a DFA built lazily, one state per set of NFA states, cached. A name
costs one dict lookup per character once the states it meets are cached; a state not cached yet costs a pass
over the NFA, bounded by :data:`MAX_NFA_STATES`. The cache holds at most :data:`MAX_DFA_STATES` states and is
emptied when full, so memory is bounded too.

Supported: literals, ``.``, classes (``[a-z0-9]``, ``[^.]``, ``\\d``, ``\\w``, ``\\s``), groups, ``|``, every
repeat (``* + ? {n,m}``, lazy or not), ``^`` and ``$`` anywhere. Rejected (:class:`PatternError`, naming the
construct): backreferences, look-arounds, conditionals, ``\\b``, inline flags, atomic groups and possessive
repeats: constructs a linear-time matcher cannot have, or that names do not need. A pattern may be at most
:data:`MAX_PATTERN_LENGTH` characters.

Owns no config, metrics or client data of its own; :mod:`ztdns.policy` decides with it.
"""

from __future__ import annotations

import re
import re._constants as sre  # type: ignore[import-not-found]  # re's own parser: the syntax stays Python's
import re._parser as sre_parse  # type: ignore[import-not-found]
from collections.abc import Callable, Iterable
from typing import Any

from ztdns.patterns import PatternError

MAX_PATTERN_LENGTH = 256
MAX_NFA_STATES = 20_000  # all patterns of one policy together (100 typical blocklist patterns: ~1,600)
MAX_DFA_STATES = 5_000

_BEGIN, _END = 1, 2  # anchored epsilon edges: followed only at the start / the end of the name
_Test = Callable[[str], bool]


def is_regex(text: str) -> bool:
    """Whether a rule or list line is a regular expression: ``/.../``."""
    return len(text) > 2 and text[0] == "/" and text[-1] == "/"


def check_regex(text: str) -> str:
    """The pattern of ``/pattern/``; raises PatternError if it is too long or uses what we cannot bound."""
    _Nfa().add(text)
    return text[1:-1]


def _category(code: Any) -> _Test:
    tests: dict[Any, _Test] = {
        sre.CATEGORY_DIGIT: str.isdigit,
        sre.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
        sre.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
        sre.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
        sre.CATEGORY_SPACE: str.isspace,
        sre.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    }
    if code not in tests:
        raise PatternError(f"unsupported character category {code}")
    return tests[code]


def _class(items: Iterable[tuple[Any, Any]]) -> _Test:
    """A character class (``[...]``) as a test on one character."""
    chars: set[str] = set()
    ranges: list[tuple[int, int]] = []
    categories: list[_Test] = []
    negate = False
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            chars.add(chr(av))
        elif op is sre.RANGE:
            ranges.append(av)
        elif op is sre.CATEGORY:
            categories.append(_category(av))
        else:
            raise PatternError(f"unsupported in a character class: {op}")

    def test(c: str) -> bool:
        found = c in chars or any(low <= ord(c) <= high for low, high in ranges) or any(t(c) for t in categories)
        return found is not negate

    return test


class _Nfa:
    """A Thompson NFA: per state, character moves ``(test, target)`` and epsilon edges ``(anchor, target)``."""

    def __init__(self) -> None:
        self.moves: list[list[tuple[_Test, int]]] = [[]]
        self.epsilons: list[list[tuple[int, int]]] = [[]]
        self.accepts: dict[int, int] = {}  # accepting state -> pattern index

    def state(self) -> int:
        if len(self.moves) >= MAX_NFA_STATES:
            raise PatternError(f"regular expressions too large (more than {MAX_NFA_STATES} states in a policy)")
        self.moves.append([])
        self.epsilons.append([])
        return len(self.moves) - 1

    def add(self, text: str) -> int:
        """Add ``/pattern/`` as a new alternative from the start state; returns its index."""
        if not is_regex(text):
            raise PatternError(f"{text!r} is not a regular expression (write /PATTERN/)")
        pattern = text[1:-1]
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise PatternError(f"regular expression longer than {MAX_PATTERN_LENGTH} characters")
        try:
            parsed = sre_parse.parse(pattern)
        except re.error as exc:
            raise PatternError(f"{text!r}: {exc}") from None
        if parsed.state.flags & ~(sre.SRE_FLAG_UNICODE):
            raise PatternError(f"{text!r}: inline flags are not supported")
        index = len(self.accepts)
        start = self.state()
        self.epsilons[0].append((0, start))
        end = self._sequence(parsed, start, text)
        self.accepts[end] = index
        return index

    def _sequence(self, items: Iterable[tuple[Any, Any]], state: int, text: str) -> int:
        for op, av in items:
            state = self._item(op, av, state, text)
        return state

    def _move(self, state: int, test: _Test) -> int:
        target = self.state()
        self.moves[state].append((test, target))
        return target

    def _item(self, op: Any, av: Any, state: int, text: str) -> int:
        if op is sre.LITERAL:
            char = chr(av)
            return self._move(state, char.__eq__)
        if op is sre.NOT_LITERAL:
            char = chr(av)
            return self._move(state, char.__ne__)
        if op is sre.ANY:
            return self._move(state, "\n".__ne__)
        if op is sre.IN:
            return self._move(state, _class(av))
        if op is sre.SUBPATTERN:
            _, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise PatternError(f"{text!r}: inline flags are not supported")
            return self._sequence(sub, state, text)
        if op is sre.BRANCH:
            end = self.state()
            for sub in av[1]:
                branch = self.state()
                self.epsilons[state].append((0, branch))
                self.epsilons[self._sequence(sub, branch, text)].append((0, end))
            return end
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, sub = av
            for _ in range(low):
                state = self._sequence(sub, state, text)
            end = self.state()
            if high is sre.MAXREPEAT:
                loop = self.state()
                self.epsilons[state].append((0, loop))
                self.epsilons[loop].append((0, end))
                self.epsilons[self._sequence(sub, loop, text)].append((0, loop))
                return end
            for _ in range(high - low):
                self.epsilons[state].append((0, end))
                state = self._sequence(sub, state, text)
            self.epsilons[state].append((0, end))
            return end
        if op is sre.AT:
            anchors = {sre.AT_BEGINNING: _BEGIN, sre.AT_BEGINNING_STRING: _BEGIN}
            anchors |= {sre.AT_END: _END, sre.AT_END_STRING: _END}
            if av not in anchors:
                raise PatternError(f"{text!r}: {str(av).lower()} is not supported")
            target = self.state()
            self.epsilons[state].append((anchors[av], target))
            return target
        raise PatternError(f"{text!r}: {str(op).lower()} is not supported (no linear-time match)")


class RegexSet:
    """Patterns matched together: :meth:`search` gives the indices of those ``re.search`` would match."""

    __slots__ = ("_accepting", "_ids", "_nfa", "_sets", "_transitions", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self._nfa = _Nfa()
        self.patterns = tuple(patterns)
        for text in self.patterns:
            self._nfa.add(text)
        self._reset()

    def __len__(self) -> int:
        return len(self.patterns)

    def _reset(self) -> None:
        self._sets: list[frozenset[int]] = []
        self._ids: dict[frozenset[int], int] = {}
        self._transitions: list[dict[str, int]] = []
        self._accepting: dict[int, frozenset[int]] = {}
        self._intern(self._closure({0}, begin=True, end=False))

    def _closure(self, states: Iterable[int], *, begin: bool, end: bool) -> frozenset[int]:
        epsilons = self._nfa.epsilons
        seen = set(states)
        todo = list(seen)
        while todo:
            for anchor, target in epsilons[todo.pop()]:
                if target not in seen and (anchor == 0 or (anchor == _BEGIN and begin) or (anchor == _END and end)):
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)

    def _intern(self, states: frozenset[int]) -> int:
        found = self._ids.get(states)
        if found is None:
            found = self._ids[states] = len(self._sets)
            self._sets.append(states)
            self._transitions.append({})
        return found

    def _step(self, current: int, char: str) -> int:
        if len(self._sets) >= MAX_DFA_STATES:
            states = self._sets[current]
            self._reset()
            current = self._intern(states)
        moves = self._nfa.moves
        accepts = self._nfa.accepts
        reached = {0}  # search: a match may start at any position
        for state in self._sets[current]:
            if state in accepts:
                reached.add(state)  # a pattern that matched stays matched
            for test, target in moves[state]:
                if test(char):
                    reached.add(target)
        following = self._intern(self._closure(reached, begin=False, end=False))
        self._transitions[current][char] = following
        return following

    def search(self, name: str) -> frozenset[int]:
        """The indices of the patterns that match somewhere in ``name``."""
        current = 0
        transitions = self._transitions
        for char in name:
            following = transitions[current].get(char)
            if following is None:
                following = self._step(current, char)
                transitions = self._transitions  # _step may have emptied the cache
            current = following
        found = self._accepting.get(current)
        if found is None:
            accepts = self._nfa.accepts
            final = self._closure(self._sets[current], begin=not name, end=True)
            found = self._accepting[current] = frozenset(accepts[s] for s in final if s in accepts)
        return found
