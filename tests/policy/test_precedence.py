"""The precedence table of docs/policy.md, one test per row, plus explain's chain of rules."""

from __future__ import annotations

from pathlib import Path

import dns.rdatatype
import pytest

from ztdns.config import ConfigError, parse_config
from ztdns.policy import View, compile_views, explain

A = int(dns.rdatatype.A)


def view(tmp_path: Path, policies: str, lists: dict[str, str] | None = None, uses: str = '["p"]') -> View:
    for name, text in (lists or {}).items():
        (tmp_path / name).write_text(text)
    text = f"[identities.x]\npolicies = {uses}\n{policies}\n"
    return compile_views(parse_config(text, "test.toml", tmp_path))["x"]


def rule(v: View, name: str) -> str:
    decision = v.decide(name, A)
    return f"{'allowed' if decision.allowed else 'blocked'} {decision.rule}"


def test_row1_written_deny_beats_every_exception(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny = ["ads.example"]\nexcept = ["ads.example"]\nallow_lists = ["ok.txt"]',
        {"ok.txt": "@@||ads.example^$important\n"},
    )
    assert rule(v, "ads.example") == "blocked deny:ads.example"


def test_row2_written_exception_beats_important_list_denies(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\nexcept = ["**.cdn.example"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "||cdn.example^$important\n"},
    )
    assert rule(v, "a.cdn.example") == "allowed allow:**"
    assert rule(v, "cdn.example") == "blocked deny:cdn.example"  # the exception covers the subtree only


def test_row2_important_list_exception_beats_important_list_deny(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "||cdn.example^$important\n@@||cdn.example^$important\n"},
    )
    assert rule(v, "cdn.example") == "allowed allow:**"


def test_row3_important_list_deny_beats_list_exception(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt"]\nallow_lists = ["fixes.txt"]',
        {"ads.txt": "||track.example^$important\n", "fixes.txt": "@@||track.example^\n"},
    )
    assert rule(v, "www.track.example") == "blocked deny:**.track.example"


def test_row4_list_exception_beats_list_deny(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "||ads.example^\n@@||good.ads.example^\n"},
    )
    assert rule(v, "good.ads.example") == "allowed allow:**"
    assert rule(v, "x.good.ads.example") == "allowed allow:**"
    assert rule(v, "bad.ads.example") == "blocked deny:**.ads.example"


def test_row4_rpz_passthru_beats_list_deny(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt", "rpz.zone"]',
        {
            "ads.txt": "||ads.example^\n",
            "rpz.zone": "$ORIGIN rpz.test.\n@ SOA ns h 1 1 1 1 1\n@ NS ns\nok.ads.example CNAME rpz-passthru.\n",
        },
    )
    assert rule(v, "ok.ads.example") == "allowed allow:**"
    assert rule(v, "no.ads.example") == "blocked deny:**.ads.example"


def test_row5_overridable_written_deny_yields_to_exceptions(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny = [{ pattern = "**.social.example", overridable = true }]\n'
        'allow_lists = ["fixes.txt"]',
        {"fixes.txt": "@@||chat.social.example^\n"},
    )
    assert rule(v, "chat.social.example") == "allowed allow:**"
    assert rule(v, "feed.social.example") == "blocked deny:**.social.example"


def test_row5_list_deny_beats_allow(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["ads.example"]\nallow_lists = ["allow.txt"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "ads.example\nother.example\n", "allow.txt": "other.example\n"},
    )
    assert rule(v, "ads.example") == "blocked deny:ads.example"
    assert rule(v, "other.example") == "blocked deny:other.example"


def test_row6_allow_and_row7_default_deny(tmp_path: Path) -> None:
    v = view(tmp_path, '[policies.p]\nallow = ["ok.example"]')
    assert rule(v, "ok.example") == "allowed allow:ok.example"
    assert rule(v, "other.example") == "blocked default-deny"


def test_an_exception_does_not_allow_by_itself(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**.corp.example"]\nexcept = ["ads.example"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "ads.example\n"},
    )
    assert rule(v, "ads.example") == "blocked default-deny"


def test_exceptions_are_identity_wide(tmp_path: Path) -> None:
    """An exception in one of the identity's policies overrides a list deny in another."""
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt"]\n[policies.fixes]\nexcept = ["ads.example"]',
        {"ads.txt": "ads.example\n"},
        uses='["p", "fixes"]',
    )
    assert rule(v, "ads.example") == "allowed allow:**"


def test_exceptions_respect_query_types(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\nexcept = [{ pattern = "v6.example", qtypes = ["AAAA"] }]\n'
        'deny_lists = ["ads.txt"]',
        {"ads.txt": "v6.example\n"},
    )
    assert not v.decide("v6.example", A).allowed
    assert v.decide("v6.example", int(dns.rdatatype.AAAA)).allowed


def test_overridable_is_for_deny_rules_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overridable"):
        view(tmp_path, '[policies.p]\nallow = [{ pattern = "x.example", overridable = true }]')


def test_explain_shows_the_whole_chain(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\nexcept = ["ads.example"]\ndeny_lists = ["ads.txt"]',
        {"ads.txt": "# list\nother.example\nads.example\n"},
    )
    explanation = explain(v, "ads.example", A)
    assert explanation.decision.allowed
    assert explanation.chain == (
        "denied by deny:ads.example at ads.txt:3 (policies.p.deny_lists[0])",
        "overridden by except:ads.example at policies.p.except[0]",
        "allowed by allow:** at policies.p.allow[0]",
    )
    blocked = explain(v, "other.example", A)
    assert blocked.chain == ("denied by deny:other.example at ads.txt:2 (policies.p.deny_lists[0])",)
    assert blocked.origin() == "ads.txt:2 (policies.p.deny_lists[0])"


def test_rewrites_win_over_allows_and_lose_to_denies(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        '[policies.p]\nallow = ["**"]\ndeny = ["bad.home.example"]\n'
        '[policies.p.rewrites]\n"nas.home.example" = "192.168.1.10"\n"bad.home.example" = "192.168.1.66"\n'
        '"alias.home.example" = "nas.home.example"',
    )
    nas = v.decide("nas.home.example", A)
    assert nas.allowed and nas.rule == "rewrite:nas.home.example" and nas.local is not None
    assert nas.local.addresses == ("192.168.1.10",)
    alias = v.decide("alias.home.example", A)
    assert alias.local is not None and alias.local.cname == "nas.home.example"
    assert rule(v, "bad.home.example") == "blocked deny:bad.home.example"


def test_sinkhole_and_block_page_are_local_data(tmp_path: Path) -> None:
    v = view(tmp_path, '[policies.p]\nallow = ["ok.example"]\nblocked_response = "sinkhole"\nsinkhole = ["192.0.2.1"]')
    decision = v.decide("other.example", A)  # the default deny of a sinkhole policy is a sinkhole too
    assert not decision.allowed and decision.blocked_response == "local"
    assert decision.local is not None and decision.local.addresses == ("192.0.2.1",)
    with pytest.raises(ConfigError, match="block_cname"):
        view(tmp_path, '[policies.p]\nblocked_response = "cname"')
