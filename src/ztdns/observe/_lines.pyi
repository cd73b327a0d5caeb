# The C extension _lines.c: native query log lines for the JSON sink's thread (observe/formats.py).
from collections.abc import Callable
from typing import Any

def native(
    batch: list[Any],
    clients: dict[int, Any],
    answers: dict[int, Any],
    client_parts: Callable[[Any], Any],
    answer_parts: Callable[[Any], Any],
    stamp_of: Callable[[float], str],
    /,
) -> bytes | None: ...
