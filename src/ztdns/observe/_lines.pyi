# The C extension _lines.c: native query log lines for the JSON sink's thread (observe/formats.py).
from collections.abc import Callable
from typing import Any

def native(
    batch: list[Any], memo: dict[Any, Any], make: Callable[[Any, Any], Any], stamp_of: Callable[[float], str], /
) -> bytes | None: ...
