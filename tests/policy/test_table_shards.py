"""A policy's name table in shards (issue 21: a refresh never blocks answering): the same decisions and explanations
as one table, nothing the garbage collector walks, no reference cycles, and replaced tables freed in pieces."""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import threading
from importlib.util import find_spec
from pathlib import Path
from unittest import mock

import dns.rdatatype
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.policy import View, compile_views, explain, release_tables, replaced_tables
from ztdns.policy import compile as compile_module
from ztdns.policy.compile import read_lists
from ztdns.policy.lists import beside_the_loop

A = int(dns.rdatatype.A)
_LABELS = ("a", "b", "ads", "cdn", "x1")
_NAMES = st.lists(st.sampled_from(_LABELS), min_size=1, max_size=3).map(lambda labels: ".".join((*labels, "com")))
_LINES = st.one_of(
    _NAMES,
    _NAMES.map(lambda name: f"*.{name}"),
    _NAMES.map(lambda name: f"**.{name}"),
    _NAMES.map(lambda name: f"0.0.0.0 {name}"),
    _NAMES.map(lambda name: f"||{name}^"),
    _NAMES.map(lambda name: f"||*.{name}^"),
    _NAMES.map(lambda name: f"|{name}|"),
    _NAMES.map(lambda name: f"@@||{name}^"),
    _NAMES.map(lambda name: f"||{name}^$important"),
    _NAMES.map(lambda name: f"@@||{name}^$important"),
)
_LIST = st.lists(_LINES, max_size=30)
_RULES = st.lists(st.one_of(_NAMES, _NAMES.map(lambda name: f"**.{name}")), max_size=3)


def _views(directory: Path, text: str, shard_names: int) -> View:
    with mock.patch.object(compile_module, "_SHARD_NAMES", shard_names):
        return compile_views(parse_config(text, "test.toml", directory))["x"]


def _config(deny: list[str], exceptions: list[str], allow_all: bool, lists: dict[str, bool]) -> str:
    deny_lists = [name for name, is_deny in lists.items() if is_deny]
    allow_lists = [name for name, is_deny in lists.items() if not is_deny]
    allow = '["**"]' if allow_all else "[]"
    return (
        '[identities.x]\npolicies = ["p", "q"]\n'
        f"[policies.p]\ndeny = {deny!r}\nexcept = {exceptions!r}\ndeny_lists = {deny_lists!r}\n"
        f"allow_lists = {allow_lists!r}\n"
        f'[policies.q]\nallow = {allow}\ndeny_lists = ["{next(iter(lists), "none.txt")}"]\n'
    ).replace("'", '"')


@settings(max_examples=60, deadline=None)
@given(
    lists=st.lists(st.tuples(_LIST, st.booleans()), min_size=1, max_size=3),
    deny=_RULES,
    exceptions=_RULES,
    allow_all=st.booleans(),
    queries=st.lists(_NAMES, max_size=10),
)
# Regression: the flat table let an alike-covered later group of the same list shadow it, so `explain` named line 2
# (`||a.com^$important`) where the one table names line 1 (`||*.a.com^`) for q.a.com.
@example(
    lists=[(["||*.a.com^", "||a.com^$important"], False)], deny=[], exceptions=["**.a.com"], allow_all=False, queries=[]
)
def test_sharded_and_flat_tables_decide_and_explain_like_one_table(
    lists: list[tuple[list[str], bool]], deny: list[str], exceptions: list[str], allow_all: bool, queries: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        files: dict[str, bool] = {}
        for index, (lines, is_deny) in enumerate(lists):
            (directory / f"l{index}.txt").write_text("".join(f"{line}\n" for line in lines))
            files[f"l{index}.txt"] = is_deny
        text = _config(deny, exceptions, allow_all, files)
        one = _views(directory, text, 1 << 30)
        sharded = _views(directory, text, 1)  # a shard for every name or so
        config = parse_config(text, "test.toml", directory)
        # As the child of a refresh compiles (ztdns.policy.apart): built in C, straight from the lists' groups.
        flat = (
            compile_module.views_of(config, compile_module.compile_policies(config, *read_lists(config), flat=True))
            if find_spec("ztdns.policy._nametable") is not None  # built without a C compiler: nothing flat
            else {"x": one}
        )
        assert all(len(policy.table) == 1 for policy in one.policies)
        listed = sum(len(lines) for lines, _ in lists)
        assert len(sharded.policies[0].table) >= min(listed, 2)
        words = {word.split()[-1].strip("|^@*.").partition("^")[0] for lines, _ in lists for word in lines}
        names = {*queries, *words, "com", ""} | {f"q.{name}" for name in words} | {f"q.r.{name}" for name in words}
        for name in sorted(names):
            assert sharded.decide(name, A) == one.decide(name, A) == flat["x"].decide(name, A), name
            assert explain(sharded, name, A) == explain(one, name, A) == explain(flat["x"], name, A), name


def _listed(directory: Path, count: int, shard_names: int) -> View:
    """A view of one policy: allow everything but ``x.example`` and ``count`` listed names."""
    (directory / "ads.txt").write_text("".join(f"ads{i}.example\n" for i in range(count)))
    text = '[policies.p]\nallow = ["**"]\ndeny = ["x.example"]\ndeny_lists = ["ads.txt"]\n'
    return _views(directory, f'[identities.x]\npolicies = ["p"]\n{text}', shard_names)


def test_tables_hold_nothing_the_collector_walks(tmp_path: Path) -> None:
    view = _listed(tmp_path, 5000, 512)
    (policy,) = view.policies
    assert len(policy.table) == 16
    assert sum(map(len, policy.table)) == 5002  # the list, x.example and the root (allow "**")
    assert not any(gc.is_tracked(shard) for shard in policy.table)


def test_a_replaced_policy_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    """Regression: each rule referred back to its policy, so a replaced table of millions of names stayed in
    memory until a full collection freed it in one long pause (or forever, when frozen by ``gc.freeze``)."""
    (tmp_path / "ads.txt").write_text("||ads.example^\n@@||ok.ads.example^\n")
    text = (
        '[identities.x]\npolicies = ["p"]\n[policies.p]\nallow = ["**"]\ndeny = ["x.example"]\n'
        'except = ["y.example"]\ndeny_lists = ["ads.txt"]\n'
    )
    views = compile_views(parse_config(text, "test.toml", tmp_path))
    assert not views["x"].decide("ads.example", A).allowed
    gc.collect()
    gc.disable()
    try:
        del views
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_release_frees_shards_no_one_else_holds(tmp_path: Path) -> None:
    view = _listed(tmp_path, 3000, 1024)
    shards = replaced_tables([view, view])
    assert len(shards) == 4  # each policy once
    probe = shards[0]
    held = sys.getrefcount(probe)
    del view
    assert sys.getrefcount(probe) < held  # the view's references are gone: only the list and probe hold it
    del probe
    release_tables(shards, patience=0)
    assert shards == []


def test_release_leaves_a_table_in_use_deciding(tmp_path: Path) -> None:
    """A query in flight may still hold the old view: its table is not emptied under it, only let go."""
    view = _listed(tmp_path, 3000, 1024)
    shards = replaced_tables([view])
    release_tables(shards, patience=0)  # in use: waited for 0 s, then left to the view
    assert shards == []
    assert all(not view.decide(f"ads{i}.example", A).allowed for i in range(3000))
    assert not view.decide("x.example", A).allowed
    assert view.decide("other.example", A).allowed


def test_long_work_beside_the_loop_lowers_the_switch_interval_until_the_last_ends() -> None:
    before = sys.getswitchinterval()
    with beside_the_loop():
        lowered = sys.getswitchinterval()
        assert lowered < before
        with beside_the_loop():
            assert sys.getswitchinterval() == lowered
        assert sys.getswitchinterval() == lowered
    assert sys.getswitchinterval() == before


def test_a_reload_frees_the_replaced_tables_in_a_thread(tmp_path: Path) -> None:
    (tmp_path / "ads.txt").write_text("".join(f"ads{i}.example\n" for i in range(3000)))
    config = parse_config(
        '[resolver]\nmode = "none"\n[log.query_log]\noutput = "off"\n'
        '[identities.lo]\nnetworks = ["127.0.0.0/8"]\npolicies = ["p"]\n'
        '[policies.p]\nallow = ["**"]\ndeny_lists = ["ads.txt"]\n',
        "test.toml",
        tmp_path,
    )

    def compiled() -> int:
        return sum(isinstance(thing, compile_module.CompiledPolicy) for thing in gc.get_objects())

    async def reload_and_wait() -> None:
        frontend = Frontend(config)
        try:
            before = compiled()
            await frontend.reload(config)
            for thread in threading.enumerate():
                if thread.name == "release-tables":
                    thread.join(timeout=120)
                    assert not thread.is_alive()
            gc.disable()  # freed by reference counting alone, not by a collection
            try:
                assert compiled() == before
            finally:
                gc.enable()
            assert not frontend.runtime.views["lo"].decide("ads7.example", A).allowed
        finally:
            await frontend.close()

    asyncio.run(reload_and_wait())
