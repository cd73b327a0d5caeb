"""The C name table (ztdns.policy._nametable) against the pure-Python path, a dict: the same value for every name,
present or not, and nothing found in a buffer that is not a table."""

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


def _lookups(shards: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for shard in shards:
        merged.update(shard)
    return merged


@settings(max_examples=150, deadline=None)
@given(shards=st.lists(st.dictionaries(_NAMES, _VALUES, max_size=40), max_size=4), others=st.lists(_NAMES))
def test_a_table_finds_what_the_dicts_hold(shards: list[dict[str, int]], others: list[str]) -> None:
    encodable = [{k: v for k, v in shard.items() if _encodable(k)} for shard in shards]
    table = nametable.NameTable(nametable.build(encodable))
    expected = _lookups(encodable)
    assert len(table) == len(expected)
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
    names = {f"n{i}.example": i for i in range(20000)}
    with tempfile.TemporaryFile() as file:
        file.write(b"\0" * 16 + nametable.build([names]))
        file.flush()
        mapped = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    table = nametable.NameTable(mapped[16:])
    del mapped
    assert len(table) == 20000
    assert table.get("n19999.example") == 19999
    assert table.get("n20000.example") is None
    assert not gc.is_tracked(table)  # no collection walks it


def test_what_is_not_a_table_is_refused() -> None:
    whole = nametable.build([{"a.example": 1}])
    for damaged in (b"", whole[:31], b"x" * len(whole), whole[:-100]):
        with pytest.raises(ValueError, match="not a name table"):
            nametable.NameTable(damaged)
    with pytest.raises(TypeError):
        nametable.build([{"a.example": "1"}])
    with pytest.raises(OverflowError):
        nametable.build([{"a.example": 2**32 - 1}])
    with pytest.raises(TypeError):
        nametable.NameTable(whole).get(b"a.example")
