"""The C name table (ztdns.policy._nametable) against the pure-Python path, a dict built alike: the same value
for every name, present or not, and nothing found in a buffer that is not a table."""

from __future__ import annotations

import gc
import mmap
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

nametable = pytest.importorskip("ztdns.policy._nametable")

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
_NAMES = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.just(""),  # the root
    st.text(max_size=20),  # anything a str can hold: non-ASCII, NUL, lone surrogates
)
_VALUES = st.integers(0, 2**32 - 2)


def _resolve(held: int, given: int, group: int) -> int:
    """Some rule of the caller's (policy/compile.py: the first alike list wins, others merge)."""
    return held if group % 2 else (held * 31 + given) % (2**32 - 1)


def _reference(groups: list[tuple[list[str], int]]) -> dict[str, int]:
    """What ``build`` does, with a dict."""
    table: dict[str, int] = {}
    for index, (names, value) in enumerate(groups):
        for name in names:
            held = table.get(name)
            table[name] = value if held is None or held == value else _resolve(held, value, index)
    return table


@settings(max_examples=150, deadline=None)
@given(
    groups=st.lists(st.tuples(st.lists(_NAMES, max_size=30), _VALUES), max_size=5),
    others=st.lists(_NAMES),
)
def test_a_table_finds_what_a_dict_built_alike_holds(groups: list[tuple[list[str], int]], others: list[str]) -> None:
    groups = [([name for name in names if _encodable(name)], value) for names, value in groups]
    built = nametable.build(groups, _resolve)
    table = nametable.NameTable(built)
    expected = _reference(groups)
    assert len(table) == len(expected)
    assert bytes(table) == built  # its bytes, as the child writes them
    for name in [*expected, *others, *(name + "x" for name in expected)]:
        assert table.get(name) == expected.get(name), name
        assert table.get(name, -1) == expected.get(name, -1)


def _encodable(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def test_a_mapped_table_is_looked_up_in_place() -> None:
    names = [f"n{i}.example" for i in range(20000)] * 2
    with tempfile.TemporaryFile() as file:
        file.write(b"\0" * 16 + nametable.build([(names, 7)], max))
        file.flush()
        mapped = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    table = nametable.NameTable(mapped[16:])
    del mapped
    assert len(table) == 20000
    assert table.get("n19999.example") == 7
    assert table.get("n20000.example") is None
    assert not gc.is_tracked(table)  # no collection walks it


def test_what_is_not_a_table_is_refused() -> None:
    whole = nametable.build([(["a.example"], 1)], max)
    for damaged in (b"", whole[:31], b"x" * len(whole), whole[:-100]):
        with pytest.raises(ValueError, match="not a name table"):
            nametable.NameTable(damaged)
    with pytest.raises(TypeError):
        nametable.build([(["a.example"], "1")], max)
    with pytest.raises(OverflowError):
        nametable.build([(["a.example"], 2**32 - 1)], max)
    with pytest.raises(OverflowError):  # what resolve chose
        nametable.build([(["a.example"], 1), (["a.example"], 2)], lambda *_: -1)
    with pytest.raises(ZeroDivisionError):  # resolve's own error
        nametable.build([(["a.example"], 1), (["a.example"], 2)], lambda *_: 1 // 0)
    with pytest.raises(TypeError):
        nametable.NameTable(whole).get(b"a.example")


def test_each_table_has_its_own_hash_key() -> None:
    """The hash is keyed per table (a list's author cannot make names collide, hash flooding): two builds of the
    same names differ in their slots yet find the same values, and each is read with its own key."""
    names = [f"n{index}.example" for index in range(200)]
    first, second = nametable.build([(names, 7)], _resolve), nametable.build([(names, 7)], _resolve)
    assert first[32:48] != second[32:48]  # the key, after magic, count, mask and the names' offset
    assert first != second
    for table in (nametable.NameTable(first), nametable.NameTable(second)):
        assert [table.get(name) for name in names] == [7] * len(names)
        assert table.get("absent.example") is None
