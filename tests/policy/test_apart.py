"""Reloads compile big lists in a child process (ztdns.policy.apart): the views it gives decide and explain
exactly as the views compiled in-process do, for every format and precedence rule; errors come back as errors."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.rdatatype
import pytest

from ztdns.config import ConfigError, parse_config
from ztdns.handler import Frontend
from ztdns.policy import apart, compile_views, compile_views_apart, explain
from ztdns.policy.apart import APART_BYTES
from ztdns.policy.compile import View

from .test_formats import RPZ  # NXDOMAIN, NODATA, PASSTHRU, DROP, local data, RPZ-IP

LISTS = {
    "ads.txt": "ads.test\n0.0.0.0 hosts.ads.test\n||deep.ads.test^\n||*.below.test^\n|exact.test|\n/^trk[0-9]+\\./\n"
    + "".join(f"n{i}.bulk.test\n" for i in range(3000)),
    "adblock.txt": "||important.test^$important\n@@||ok.ads.test^\n@@||strong.test^$important\n||strong.test^\n"
    "bücher.test\n||ads.test^\n||x.test^$third-party\n",
    "allow.txt": "allowed.test\n**.wide.test\n@@||n7.bulk.test^\n",
    "rpz.zone": RPZ,
}
CONFIG = """\
[identities.x]
policies = ["first", "second"]
[identities.y]
policies = ["second"]
[policies.first]
deny = ["written.test", {pattern = "soft.test", overridable = true}, {pattern = "aaaa.test", qtypes = ["AAAA"]}]
except = ["**.exempt.ads.test"]
deny_lists = ["ads.txt", "adblock.txt", "rpz.zone"]
allow_lists = ["allow.txt"]
rewrites = {"home.test" = "192.0.2.1"}
[policies.second]
allow = ["**"]
deny_lists = ["adblock.txt", "ads.txt"]
blocked_response = "sinkhole"
sinkhole = ["0.0.0.0"]
"""
ONE_LIST = '[identities.x]\npolicies = ["p"]\n[policies.p]\ndeny_lists = ["a.txt"]\n'
NAMES = [
    "ads.test", "a.ads.test", "hosts.ads.test", "deep.ads.test", "x.deep.ads.test", "below.test", "a.below.test",
    "exact.test", "a.exact.test", "trk12.example", "important.test", "ok.ads.test", "strong.test", "a.strong.test",
    "xn--bcher-kva.test", "x.test", "allowed.test", "a.wide.test", "n7.bulk.test", "n2999.bulk.test",
    "a.n5.bulk.test", "nx.site.test", "a.nx.site.test", "nodata.site.test", "pass.site.test",
    "tcp.site.test", "txt.site.test", "drop.site.test",
    "alias.site.test", "sink.site.test", "written.test", "soft.test", "aaaa.test", "a.exempt.ads.test",
    "home.test", "other.test", "",
]  # fmt: skip


def both(tmp_path: Path, text: str = CONFIG) -> tuple[dict[str, View], dict[str, View]]:
    for name, content in LISTS.items():
        (tmp_path / name).write_text(content)
    config = parse_config(text, "test.toml", tmp_path)
    return compile_views(config), compile_views_apart(config, min_bytes=0)


@pytest.mark.slow
def test_views_compiled_apart_decide_and_explain_alike(tmp_path: Path) -> None:
    here, apart = both(tmp_path)
    assert here.keys() == apart.keys()
    for identity in here:
        for name in NAMES:
            for qtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                assert apart[identity].decide(name, qtype) == here[identity].decide(name, qtype), (identity, name)
                assert explain(apart[identity], name, qtype) == explain(here[identity], name, qtype)
        for mine, theirs in zip(here[identity].policies, apart[identity].policies, strict=True):
            assert sum(map(len, theirs.table)) == sum(map(len, mine.table)) > 3000
            assert not any(map(gc.is_tracked, theirs.table))  # strings to ints: no collection walks them
        assert apart[identity].decide_addresses(["192.0.2.1"]) == here[identity].decide_addresses(["192.0.2.1"])


@pytest.mark.slow
def test_the_child_s_log_records_are_logged_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ztdns")
    both(tmp_path)
    assert any("list ads.txt: 3006 entries" in record.getMessage() for record in caplog.records)
    assert any("policy first:" in record.getMessage() for record in caplog.records)


@pytest.mark.slow
def test_a_list_that_cannot_be_read_fails_as_in_process(tmp_path: Path) -> None:
    config = parse_config(
        '[identities.x]\npolicies = ["p"]\n[policies.p]\ndeny_lists = ["missing.txt", "big.txt"]\n',
        "test.toml",
        tmp_path,
    )
    (tmp_path / "big.txt").write_text("a.test\n")
    with pytest.raises(ConfigError) as in_process:
        compile_views(config)
    with pytest.raises(ConfigError) as in_child:
        compile_views_apart(config, min_bytes=0)
    assert str(in_child.value) == str(in_process.value)


def test_small_lists_compile_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("subprocess.Popen", None)  # would fail if called
    (tmp_path / "a.txt").write_text("a.test\n")
    config = parse_config(ONE_LIST, "t.toml", tmp_path)
    assert not compile_views_apart(config)["x"].decide("a.test", dns.rdatatype.A).allowed


def test_without_the_c_extension_big_lists_compile_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apart, "NameTable", None)  # built without a C compiler
    monkeypatch.setattr("subprocess.Popen", None)  # would fail if called
    (tmp_path / "a.txt").write_text("a.test\n")
    config = parse_config(ONE_LIST, "t.toml", tmp_path)
    view = compile_views_apart(config, min_bytes=0)["x"]
    assert not view.decide("a.test", dns.rdatatype.A).allowed
    assert all(isinstance(shard, dict) for shard in view.policies[0].table)


@pytest.mark.slow
def test_a_reload_with_big_lists_compiles_them_in_a_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> object:
        started.append(args)
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    (tmp_path / "big.txt").write_text("".join(f"name{i}.big.test\n" for i in range(APART_BYTES // 16)))
    text = '[resolver]\nmode = "none"\n[identities.x]\nnetworks = ["127.0.0.0/8"]\npolicies = ["p"]\n[policies.p]\n'
    frontend = Frontend(parse_config(text + 'allow = ["**"]\n', "test.toml", tmp_path))
    assert not started  # at start the lists are compiled in the process

    async def reload() -> None:
        await frontend.reload(parse_config(text + 'allow = ["**"]\ndeny_lists = ["big.txt"]\n', "t.toml", tmp_path))
        await frontend.close()

    asyncio.run(reload())
    assert len(started) == 1
    view = frontend.runtime.views["x"]
    assert not view.decide("name7.big.test", dns.rdatatype.A).allowed
    assert view.decide("other.test", dns.rdatatype.A).allowed


@pytest.mark.parametrize("cut", ["header", "end", "tables", "damaged"])
def test_an_answer_cut_short_fails_the_reload(tmp_path: Path, cut: str) -> None:
    """A child killed half way (out of memory, say) must not leave part of a table in service."""
    (tmp_path / "a.txt").write_text("".join(f"n{i}.test\n" for i in range(5000)))
    config = parse_config(ONE_LIST, "t.toml", tmp_path)
    sent = io.BytesIO()
    with (tmp_path / "tables").open("w+b") as tables:
        apart.answer(sent, config, tables)
        whole = sent.getvalue()
        view = apart.adopt(config, io.BytesIO(whole), tables)["x"]
        assert view.decide("n4999.test", dns.rdatatype.A).allowed is False
        del view  # its mapping of the file: never read what is changed under it
        if cut == "tables":
            tables.truncate(tables.seek(0, 2) - 8)
        elif cut == "damaged":
            tables.seek(0)
            tables.write(b"\0" * 8)  # the first table's magic number
            tables.flush()
        else:
            whole = whole[: {"header": 100, "end": len(whole) - 8}[cut]]
        with pytest.raises(RuntimeError, match=r"ended before|not all of them|damaged"):
            apart.adopt(config, io.BytesIO(whole), tables)


@pytest.mark.slow
def test_a_child_that_fails_leaves_the_compile_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(apart, "_CHILD", [sys.executable, "-c", "import sys; sys.exit(3)"])
    failed = apart.CHILD_FAILURES["failed"]
    here, fallen_back = both(tmp_path)
    assert fallen_back["x"].decide("n2999.bulk.test", dns.rdatatype.A) == here["x"].decide(
        "n2999.bulk.test", dns.rdatatype.A
    )
    assert any("exit status 3" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert apart.CHILD_FAILURES["failed"] == failed + 1


@pytest.mark.slow
def test_a_hung_child_is_killed_and_the_policies_in_service_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "big.txt").write_text("".join(f"name{i}.big.test\n" for i in range(APART_BYTES // 16)))
    text = '[resolver]\nmode = "none"\n[identities.x]\nnetworks = ["127.0.0.0/8"]\npolicies = ["p"]\n[policies.p]\n'
    frontend = Frontend(parse_config(text + 'allow = ["**"]\ndeny = ["old.test"]\n', "test.toml", tmp_path))
    monkeypatch.setattr(apart, "_CHILD", [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(apart, "CHILD_TIMEOUT", 0.5)
    timeouts = apart.CHILD_FAILURES["timeout"]

    async def reload() -> None:
        with pytest.raises(apart.ChildTimeout, match=r"no answer within 0\.5 s"):
            await frontend.reload(parse_config(text + 'allow = ["**"]\ndeny_lists = ["big.txt"]\n', "t.toml", tmp_path))
        await frontend.close()

    asyncio.run(reload())
    view = frontend.runtime.views["x"]
    assert not view.decide("old.test", dns.rdatatype.A).allowed  # the policy in service stays
    assert view.decide("name7.big.test", dns.rdatatype.A).allowed
    assert apart.CHILD_FAILURES["timeout"] == timeouts + 1
    assert any("no answer within" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    exported = {
        sample.labels["reason"]: sample.value
        for family in frontend.collect()
        if family.name == "ztdns_policy_compile_child_failures"
        for sample in family.samples
    }
    assert exported["timeout"] == timeouts + 1


@pytest.mark.slow
def test_a_feed_s_new_copy_is_counted_alike_in_a_child(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ztdns")
    copy = tmp_path / "feed.txt"
    copy.write_text(LISTS["adblock.txt"] + LISTS["ads.txt"] + "not a name!\nexample.com##.banner\n")
    in_child = apart.count_entries(copy, "https://feed.test/l.txt", min_bytes=0)
    assert in_child == apart.count_entries(copy, "https://feed.test/l.txt")
    assert in_child[0] == 3012
    assert in_child[1] == {"adblock-modifier:third-party": 1, "adblock-cosmetic": 1, "invalid": 1}
    assert sum(f"list https://feed.test/l.txt: {in_child[0]} entries" in r.getMessage() for r in caplog.records) == 2
