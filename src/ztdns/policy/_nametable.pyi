# The C extension _nametable.c: policy name tables built in one process and looked up in place in another.
from collections.abc import Sequence
from typing import TypeVar, overload

from typing_extensions import Buffer

_T = TypeVar("_T")

def build(shards: Sequence[dict[str, int]], /) -> bytes: ...

class NameTable:
    def __init__(self, buffer: Buffer, /) -> None: ...
    @overload
    def get(self, name: str, /) -> int | None: ...
    @overload
    def get(self, name: str, default: _T, /) -> int | _T: ...
    def __len__(self) -> int: ...
