"""Policy: grammar, compiled views (deny beats allow, qtypes, several policies), list files, explain."""

from __future__ import annotations

import logging
from pathlib import Path

import dns.name
import dns.rdatatype
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ztdns.config import Config, ConfigError, default_config, parse_config
from ztdns.name_regex import is_regex
from ztdns.patterns import Pattern, PatternError, Scope, is_normal_name, parse_pattern
from ztdns.policy import View, compile_views, explain
from ztdns.policy.lists import ANY_DEPTH, EXACT, ONE_LABEL, Tally, _lines, read_list, scan
from ztdns.wire.query import name_key

A = int(dns.rdatatype.A)
AAAA = int(dns.rdatatype.AAAA)
TXT = int(dns.rdatatype.TXT)


def config(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(text, "test.toml", base_dir or Path("."))


def view(policy: str, base_dir: Path | None = None) -> View:
    """The view of identity 'x' with the single policy 'p' given as TOML keys."""
    text = f'[identities.x]\npolicies = ["p"]\n[policies.p]\n{policy}\n'
    return compile_views(config(text, base_dir))["x"]


def allowed(v: View, name: str, qtype: int = A) -> bool:
    return v.decide(name, qtype).allowed


# --- grammar ---


@pytest.mark.parametrize(
    ("text", "scope", "base"),
    [
        ("example.com", Scope.EXACT, "example.com"),
        ("Example.COM.", Scope.EXACT, "example.com"),
        ("*.example.com", Scope.ONE_LABEL, "example.com"),
        ("**.example.com", Scope.ANY_DEPTH, "example.com"),
        ("**", Scope.ANY_DEPTH, ""),
        ("_dmarc.example.com", Scope.EXACT, "_dmarc.example.com"),
    ],
)
def test_patterns_parse(text: str, scope: Scope, base: str) -> None:
    pattern = parse_pattern(text)
    assert pattern == Pattern(scope, base)
    assert parse_pattern(str(pattern)) == pattern


@pytest.mark.parametrize(
    "text",
    ["*.*.x", "a*.x", "x.*.y", "*.", "***.x", "*x.y", "a..b", "-" * 64 + ".x", "a b.c", "\u0301a.com", "x" * 254],
)
def test_invalid_patterns(text: str) -> None:
    with pytest.raises(PatternError):
        parse_pattern(text)


def test_invalid_pattern_in_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"test.toml:4: policies.p.deny\[1\]: '\*\.\*\.x' is not a valid pattern"):
        config('[policies.p]\nallow = ["a.x"]\ndeny = ["b.x",\n "*.*.x"]\n')


def test_exact_matches_only_the_name() -> None:
    v = view('allow = ["example.com"]')
    assert allowed(v, "example.com")
    assert not allowed(v, "www.example.com")
    assert not allowed(v, "com")
    assert not allowed(v, "notexample.com")


def test_one_label_below() -> None:
    v = view('allow = ["*.example.com"]')
    assert allowed(v, "www.example.com")
    assert not allowed(v, "example.com")
    assert not allowed(v, "a.www.example.com")


def test_any_depth_below_and_apex_only_if_listed() -> None:
    v = view('allow = ["**.example.com"]')
    assert allowed(v, "a.example.com")
    assert allowed(v, "a.b.c.example.com")
    assert not allowed(v, "example.com")
    assert not allowed(v, "badexample.com")
    assert allowed(view('allow = ["example.com", "**.example.com"]'), "example.com")


def test_double_star_matches_every_name_and_the_root() -> None:
    v = view('allow = ["**"]')
    for name in ("", "com", "a.b.c.d.example"):
        assert allowed(v, name), name
    assert v.decide("com", A).rule == "allow:**"


def test_root_exact() -> None:
    v = view('allow = ["."]')
    assert allowed(v, "")
    assert not allowed(v, "com")


# --- decisions ---


def test_default_deny() -> None:
    v = view('allow = ["ok.example"]\nblocked_response = "refused"\ninclude_rule_text = false')
    decision = v.decide("other.example", A)
    assert not decision.allowed
    assert decision.rule == "default-deny"
    assert decision.policy == "p"
    assert decision.source is None
    assert decision.blocked_response == "refused"
    assert decision.include_rule_text is False
    assert decision.ede_text() == "policy=p rule=default-deny"


def test_deny_beats_allow_both_ways() -> None:
    v = view('allow = ["**.example.com", "www.example.com"]\ndeny = ["ads.example.com", "**.www.example.com"]')
    assert allowed(v, "www.example.com")
    assert allowed(v, "mail.example.com")
    decision = v.decide("ads.example.com", A)
    assert not decision.allowed
    assert decision.rule == "deny:ads.example.com"
    assert decision.ede_text() == "policy=p rule=deny:ads.example.com"
    # A broad deny beats a narrow allow.
    v = view('allow = ["www.example.com"]\ndeny = ["**.example.com"]')
    assert v.decide("www.example.com", A).rule == "deny:**.example.com"


def test_allow_decision_names_the_rule() -> None:
    decision = view('allow = ["*.example.com"]').decide("www.example.com", A)
    assert decision.allowed
    assert decision.rule == "allow:*.example.com"
    assert decision.source is None


def test_query_types() -> None:
    v = view(
        'allow = ["**.example", {pattern = "txt.other", qtypes = ["TXT"]}]\n'
        'deny = [{pattern = "v6.example", qtypes = ["aaaa"]}]'
    )
    assert allowed(v, "v6.example", A)
    assert not allowed(v, "v6.example", AAAA)
    assert v.decide("v6.example", AAAA).rule == "deny:v6.example"
    assert allowed(v, "txt.other", TXT)
    assert v.decide("txt.other", A).rule == "default-deny"


def test_several_policies_per_identity() -> None:
    v = compile_views(
        config(
            '[identities.x]\npolicies = ["base", "extra"]\n'
            '[policies.base]\nallow = ["**.example.com"]\nblocked_response = "nodata"\n'
            '[policies.extra]\nallow = ["**.example.org"]\ndeny = ["bad.example.com"]\n'
            'blocked_response = "refused"\ninclude_rule_text = false\n'
        )
    )["x"]
    # A deny in any policy beats an allow in any other; the deciding policy's settings apply.
    denied = v.decide("bad.example.com", A)
    assert (denied.allowed, denied.policy, denied.blocked_response, denied.include_rule_text) == (
        False,
        "extra",
        "refused",
        False,
    )
    assert v.decide("www.example.com", A).policy == "base"
    assert v.decide("www.example.org", A).policy == "extra"
    # Nothing matched: default deny in the name of the first policy.
    fallback = v.decide("example.net", A)
    assert (fallback.policy, fallback.blocked_response) == ("base", "nodata")


def test_shared_policy_is_compiled_once() -> None:
    views = compile_views(
        config('[identities.a]\npolicies = ["p"]\n[identities.b]\npolicies = ["p"]\n[policies.p]\nallow = ["x"]\n')
    )
    assert views["a"].policies[0] is views["b"].policies[0]


def test_identity_needs_a_policy() -> None:
    with pytest.raises(ConfigError, match=r"identities.x.policies"):
        config("[identities.x]\npolicies = []\n")


def test_built_in_default_config() -> None:
    v = compile_views(default_config())["loopback"]
    assert allowed(v, "www.ztdns.test")
    assert allowed(v, "ztdns.test")
    assert v.decide("www.blocked.ztdns.test", A).rule == "deny:**.blocked.ztdns.test"
    assert not allowed(v, "example.com")


_LABELS = ["a", "b", "c", "ads", "x"]
_names = st.lists(st.sampled_from(_LABELS), max_size=4).map(".".join)
_patterns = st.one_of(
    _names,
    _names.filter(bool).map(lambda n: "*." + n),
    _names.map(lambda n: "**." + n if n else "**"),
)
_rules = st.lists(
    st.tuples(_patterns, st.one_of(st.none(), st.sets(st.sampled_from(["A", "AAAA"]), min_size=1))),
    max_size=6,
)


def _reference_match(pattern: Pattern, name: str) -> bool:
    """The grammar written the slow, obvious way, to check the compiled tables against."""
    base = pattern.base
    if pattern.scope is Scope.EXACT:
        return name == base
    below = name.endswith("." + base) if base else bool(name)
    if pattern.scope is Scope.ONE_LABEL:
        return below and "." not in name[: len(name) - len(base) - 1]
    return below or (not base and not name)


def _toml_rules(rules: list[tuple[str, set[str] | None]]) -> str:
    items = [f'"{p}"' if q is None else f'{{pattern = "{p}", qtypes = {sorted(q)!r}}}' for p, q in rules]
    return "[" + ", ".join(items) + "]"


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(allow=_rules, deny=_rules, name=_names, qtype=st.sampled_from(["A", "AAAA"]))
def test_compiled_view_agrees_with_the_grammar(
    allow: list[tuple[str, set[str] | None]], deny: list[tuple[str, set[str] | None]], name: str, qtype: str
) -> None:
    v = view(f"allow = {_toml_rules(allow)}\ndeny = {_toml_rules(deny)}")

    def hits(rules: list[tuple[str, set[str] | None]]) -> list[str]:
        return [
            str(parse_pattern(p))
            for p, q in rules
            if _reference_match(parse_pattern(p), name) and (q is None or qtype in q)
        ]

    decision = v.decide(name, int(dns.rdatatype.from_text(qtype)))
    if hits(deny):
        assert not decision.allowed
        assert decision.rule.removeprefix("deny:") in hits(deny)
    elif hits(allow):
        assert decision.allowed
        assert decision.rule.removeprefix("allow:") in hits(allow)
    else:
        assert decision.rule == "default-deny"


# --- list files ---

_MIXED = """\
# a comment
! an AdBlock comment
[Adblock Plus 2.0]

plain.example
Upper.Example.
*.one.example
**.deep.example
0.0.0.0 hosts1.example hosts2.example  # trailing comment
127.0.0.1 hosts3.example
::1 hosts4.example
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
255.255.255.255 broadcasthost
||adblock.example^
||adblock-pipe.example^|
@@||allowed.example^
||options.example^$third-party
||path.example/ads/*
|https://x.example/
example.org##.banner
*.*.bad.example
not a name
0.0.0.0 ok.example bad..name
"""


def test_list_formats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mixed.txt"
    path.write_text(_MIXED)
    with caplog.at_level(logging.INFO, logger="ztdns.policy"):
        parsed = read_list(path, "mixed.txt")
    assert parsed.entries() == {
        "plain.example": EXACT,
        "upper.example": EXACT,
        "one.example": ONE_LABEL,
        "deep.example": ANY_DEPTH,
        "hosts1.example": EXACT,
        "hosts2.example": EXACT,
        "hosts3.example": EXACT,
        "hosts4.example": EXACT,
        "adblock.example": EXACT | ANY_DEPTH,
        "adblock-pipe.example": EXACT | ANY_DEPTH,
        "allowed.example": (EXACT | ANY_DEPTH) << 6,  # an exception (kind 2)
        "ok.example": EXACT,
    }
    tally = parsed.tally
    assert tally.lines == len(_MIXED.splitlines())
    assert tally.comments == 4
    assert dict(tally.skipped) == {
        "hosts-local": 3,
        "adblock-modifier:third-party": 1,
        "adblock-unsupported": 2,
        "adblock-cosmetic": 1,
        "invalid": 2,
    }
    [line] = [r.getMessage() for r in caplog.records if "mixed.txt" in r.getMessage()]
    assert "12 entries" in line
    assert "adblock-modifier:third-party=1" in line


def test_crlf_and_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_bytes(b"a.example\r\nb\xff\xfe.example\r\n||c.example^\r\n0.0.0.0 d.example\r\n")
    parsed = read_list(path, "odd.txt")
    assert parsed.entries() == {"a.example": EXACT, "c.example": EXACT | ANY_DEPTH, "d.example": EXACT}
    assert dict(parsed.tally.skipped) == {"invalid": 1}


@settings(max_examples=200, deadline=None)
@example(["", "", "/", "0", "/"])  # a regular-expression line: once failed as not a normal name
@given(
    st.lists(
        st.one_of(st.text(max_size=60), st.sampled_from(["||", "0.0.0.0 ", "**.", "*.", "@@", "#"])),
        max_size=20,
    )
)
def test_junk_lines_never_crash(pieces: list[str]) -> None:
    lines = ["".join(pieces[i : i + 3]) + "\n" for i in range(0, len(pieces), 2)]
    tally = Tally()
    for _, name, bits in scan(lines, tally):
        # A name, the root, or a '/pattern/' line (regular-expression entries, which scan gives as written).
        assert name == "" or is_normal_name(name) or is_regex(name)
        assert 0 < bits < 1 << 12  # 3 scopes x 4 kinds (plain, important, exception, important exception)
    assert tally.lines == len(lines)


_PIECES = ["||", "^", "0.0.0.0 ", "127.0.0.1 ", ".", "..", "a", "B", "localhost", "-", "_", " ", "#", "\r", "x" * 64]


@settings(max_examples=300, deadline=None)
@example(["0.0.0.0 ."])  # the root alone: once an entry '' on the fast path, none on the line scan
@example(["a", "."])
@given(st.lists(st.lists(st.sampled_from(_PIECES) | st.text(max_size=4), max_size=6).map("".join), max_size=30))
def test_whole_file_fast_path_agrees_with_the_line_scan(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    # read_list takes the common line forms a whole file at a time (C loops); scan decides line by line. They
    # must give the same entries and the same counts.
    path = tmp_path_factory.mktemp("bulk") / "list.txt"
    path.write_bytes("\n".join(line.replace("\n", "") for line in lines).encode("utf-8", "replace"))
    parsed = read_list(path, "list.txt")
    tally = Tally()
    expected: dict[str, int] = {}
    for _, name, bits in scan(_lines(path), tally):
        expected[name] = expected.get(name, 0) | bits
    assert parsed.entries() == expected
    assert (parsed.tally.lines, parsed.tally.comments, parsed.tally.skipped) == (
        tally.lines,
        tally.comments,
        tally.skipped,
    )


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=400))
def test_junk_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("junk") / "junk.txt"
    path.write_bytes(data)
    parsed = read_list(path, "junk.txt")
    assert all(name == "" or is_normal_name(name) for name in parsed.entries())


def test_lists_in_policies(tmp_path: Path) -> None:
    (tmp_path / "ads.txt").write_text("||ads.example^\n0.0.0.0 tracker.example\n")
    (tmp_path / "ok.txt").write_text("**.example\n")
    v = view('deny_lists = ["ads.txt"]\nallow_lists = ["ok.txt"]\nallow = ["tracker.example"]', tmp_path)
    decision = v.decide("x.ads.example", A)
    assert not decision.allowed
    assert decision.rule == "deny:**.ads.example"
    assert decision.source == "ads.txt"
    assert decision.ede_text() == "policy=p rule=deny:**.ads.example list=ads.txt"
    assert v.decide("ads.example", A).rule == "deny:ads.example"
    assert v.decide("tracker.example", A).rule == "deny:tracker.example"
    allowed_by_list = v.decide("www.example", A)
    assert (allowed_by_list.allowed, allowed_by_list.rule, allowed_by_list.source) == (
        True,
        "allow:**.example",
        "ok.txt",
    )


def test_list_shared_by_policies_is_read_once_and_stays_correct(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "names.txt").write_text("a.example\n||b.example^\n")
    (tmp_path / "small.txt").write_text("c.example\n")
    text = (
        '[identities.deny]\npolicies = ["deny"]\n[identities.allow]\npolicies = ["allow"]\n'
        '[identities.both]\npolicies = ["mixed"]\n'
        '[policies.deny]\ndeny_lists = ["names.txt"]\nallow = ["**"]\n'
        '[policies.allow]\nallow_lists = ["names.txt"]\n'
        '[policies.mixed]\nallow_lists = ["small.txt", "names.txt"]\ndeny_lists = ["./small.txt"]\n'
    )
    with caplog.at_level(logging.INFO, logger="ztdns.policy"):
        views = compile_views(config(text, tmp_path))
    assert sum("names.txt" in r.getMessage() for r in caplog.records) == 1
    assert not allowed(views["deny"], "x.b.example")
    assert allowed(views["deny"], "c.example")
    assert allowed(views["allow"], "x.b.example")
    assert not allowed(views["allow"], "x.a.example")
    assert allowed(views["both"], "a.example")
    denied = views["both"].decide("c.example", A)
    assert (denied.allowed, denied.source) == (False, "./small.txt")


def test_missing_list_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        view('deny_lists = ["missing.txt"]', tmp_path)
    message = str(raised.value)
    assert "policies.p.deny_lists[0]" in message
    assert str(tmp_path / "missing.txt") in message


def test_unreadable_list_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.txt"):
        view('allow_lists = ["dir.txt"]', tmp_path)


# --- explain ---


def test_explain_config_rule() -> None:
    v = view('deny = ["a.example", {pattern = "**.ads.example", qtypes = ["A", "AAAA"]}]')
    result = explain(v, "x.ads.example", A)
    assert result.decision.rule == "deny:**.ads.example"
    assert result.key == "policies.p.deny[1]"
    assert result.origin() == "policies.p.deny[1]"
    assert result.qtypes == ("A", "AAAA")
    assert result.line is None


def test_explain_list_line(tmp_path: Path) -> None:
    (tmp_path / "ads.txt").write_text("# header\nfirst.example\n\n0.0.0.0 second.example\n||third.example^\n")
    v = view('deny_lists = ["ads.txt"]', tmp_path)
    for name, line in (
        ("first.example", 2),
        ("second.example", 4),
        ("third.example", 5),
        ("x.third.example", 5),
    ):
        result = explain(v, name, A)
        assert result.line == line, name
        assert result.key == "policies.p.deny_lists[0]"
        assert result.origin() == f"ads.txt:{line} (policies.p.deny_lists[0])"


def test_explain_default_deny() -> None:
    result = explain(view('allow = ["a.example"]'), "b.example", A)
    assert result.decision.rule == "default-deny"
    assert result.key is None
    assert "default deny" in result.origin()


def _reference_name_key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


# Labels from bytes that need escaping, dots inside labels, spaces, high bytes, case and IDNA prefixes.
_LABEL_BYTES = st.sampled_from(list(b'aZ09-_*."().;\\@$ \x00\x1f\x7f\x80\xff\xc3\xa9!~') + list(range(256)))
_NAME_LABELS = st.lists(
    st.one_of(st.lists(_LABEL_BYTES, min_size=1, max_size=12).map(bytes), st.sampled_from([b"xn--bcher-kva", b"WWW"])),
    max_size=6,
)


@pytest.mark.slow
@settings(max_examples=400)
@given(_NAME_LABELS)
def test_name_key_is_the_lower_cased_text_of_every_name(labels: list[bytes]) -> None:
    name = dns.name.Name([*labels, b""])
    assert name_key(name) == _reference_name_key(name)


@pytest.mark.parametrize(
    "text", [".", "com.", "Www.Example.COM.", r"a\.b.example.", r"a\032b.example.", "xn--bcher-kva.example.", "@"]
)
def test_name_key_of_named_cases(text: str) -> None:
    name = dns.name.from_text(text, origin=None)
    assert name_key(name) == _reference_name_key(name)


def test_a_name_in_several_lists_keeps_every_lists_rules(tmp_path: Path) -> None:
    # Lists that decide alike share one dict where the first list's entry wins; lists that decide differently
    # are merged name by name: 'b.txt' adds the names below shared.example, 'c.txt' an exception for one.
    (tmp_path / "a.txt").write_text("shared.example\nonly-a.example\n")
    (tmp_path / "b.txt").write_text("shared.example\n||shared.example^\n")
    (tmp_path / "c.txt").write_text("@@||x.shared.example^\nonly-c.example\n")
    v = view('allow = ["**"]\ndeny_lists = ["a.txt", "b.txt", "c.txt"]', tmp_path)
    assert v.decide("shared.example", A).source == "a.txt"
    below = v.decide("y.shared.example", A)
    assert not below.allowed and below.source == "b.txt"
    assert v.decide("x.shared.example", A).allowed
    assert v.decide("only-c.example", A).source == "c.txt"
    assert v.decide("only-a.example", A).source == "a.txt"
