"""Regular-expression rules: Python's syntax and meaning (re.search), matched in time linear in the name."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns import name_regex
from ztdns.config import ConfigError, parse_config
from ztdns.name_regex import RegexSet, check_regex
from ztdns.patterns import PatternError
from ztdns.policy import compile_views, explain
from ztdns.policy.lists import read_list

A = 1
_PATTERNS = [
    r"/^ad([sxv]?[0-9]*|system)[_.-]([^.[:space:]]+\.){1,}|[_.-]ad([sxv]?[0-9]*|system)[_.-]/",
    r"/(^|\.)ads\./",
    r"/a.*a.*b/",
    r"/[a.]*[a.]*[a.]*b/",
    r"/^$/",
    r"/x{2,3}y?$/",
    r"/\d+\.com$/",
    r"/(a|aa)+b/",
    r"/t[^.]+?r$/",
    r"/^[^.]+\.example$/",
    r"/\w-\W/",
]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="adsxv0179._-bytrexamplcom", max_size=40))
def test_matches_what_re_search_matches(name: str) -> None:
    matcher = _shared_matcher()
    expected = {index for index, text in enumerate(_PATTERNS) if re.search(text[1:-1], name)}
    assert matcher.search(name) == expected


_MATCHER: list[RegexSet] = []


def _shared_matcher() -> RegexSet:
    if not _MATCHER:
        _MATCHER.append(RegexSet(_PATTERNS))
    return _MATCHER[0]


@pytest.mark.parametrize(
    "text",
    [r"/(a)\1/", r"/(?=a)b/", r"/(?<!a)b/", r"/\bads/", r"/(?i)ads/", r"/(?>a+)b/", r"/a++b/", "/" + "a" * 300 + "/"],
)
def test_constructs_without_a_linear_bound_are_rejected(text: str) -> None:
    with pytest.raises(PatternError):
        check_regex(text)


def test_backtracking_patterns_stay_linear() -> None:
    # Python's re needs milliseconds to years on these with a 253-character name; the DFA walks it once.
    name = ".".join(["a" * 63] * 3 + ["a" * 61])
    nested = RegexSet([r"/(a|aa)*(a+)+c/", r"/a.*a.*a.*a.*b/", r"/([a.]*)*[a.]*[a.]*b/"])
    started = time.perf_counter()
    assert nested.search(name) == set()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(100):
        nested.search(name)
    warm = (time.perf_counter() - started) / 100
    # Backtracking takes seconds to years here; the DFA well under a millisecond. Bounds for a loaded machine.
    assert cold < 2 and warm < 0.05, (cold, warm)


def test_the_state_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(name_regex, "MAX_DFA_STATES", 40)
    matcher = RegexSet([r"/a[^.]{3,12}b/", r"/(^|\.)x/"])  # many reachable state sets
    names = [f"a{index:b}".replace("0", "c") + "b" for index in range(2_000)]
    for name in names:
        assert matcher.search(name) == ({0} if 3 <= len(name) - 2 <= 12 else set())
        assert len(matcher._sets) <= 40
    assert matcher.search("a.b") == set() and matcher.search("q.xab") == {1}


def _view(tmp_path: Path, policy: str) -> object:
    config = parse_config(f'[identities.x]\npolicies = ["p"]\n[policies.p]\n{policy}\n', "t.toml", tmp_path)
    return compile_views(config)["x"]


def test_regex_lines_and_rules_in_policies(tmp_path: Path) -> None:
    (tmp_path / "re.txt").write_text("# tracker hosts\n/^track[0-9]+\\./\n/(?=x)/\nplain.example\n")
    parsed = read_list(tmp_path / "re.txt", "re.txt")
    assert parsed.regexes == ["/^track[0-9]+\\./"] and dict(parsed.tally.skipped) == {"regex-unsupported": 1}
    config = parse_config(
        '[identities.x]\npolicies = ["p"]\n[policies.p]\nallow = ["**", "/^ok-/"]\n'
        'deny = [{ pattern = "/^ok-bad/", overridable = true }]\ndeny_lists = ["re.txt"]\n'
        'except = ["/^track9\\\\./"]\n',
        "t.toml",
        tmp_path,
    )
    view = compile_views(config)["x"]
    denied = view.decide("track12.cdn.example", A)
    assert not denied.allowed and denied.rule == "deny:/^track[0-9]+\\./" and denied.source == "re.txt"
    assert view.decide("www.track12.example", A).allowed  # anchored at the start
    assert view.decide("track9.cdn.example", A).allowed  # the written exception beats the list deny
    assert not view.decide("ok-bad.example", A).allowed
    assert view.decide("plain.example", A).rule == "deny:plain.example"
    explained = explain(view, "track12.cdn.example", A)
    assert explained.line == 2 and "re.txt:2" in explained.origin()


def test_invalid_regex_rules_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policies\.p\.deny"):
        parse_config('[identities.x]\npolicies = ["p"]\n[policies.p]\ndeny = ["/(a)\\\\1/"]\n', "t.toml", tmp_path)
