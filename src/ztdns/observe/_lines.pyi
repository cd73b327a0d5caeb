# The C extension _lines.c: native query log lines and dnstap frames of a batch (observe/formats.py, dnstap.py).
from collections.abc import Callable
from typing import Any

def native(
    batch: list[Any],
    start: int,
    stop: int,
    clients: dict[int, Any],
    answers: dict[int, Any],
    client_parts: Callable[[Any], Any],
    answer_parts: Callable[[Any], Any],
    second_of: Callable[[int], str],
    out: bytearray,
    /,
) -> int | None: ...
def dnstap(
    batch: list[Any],
    start: int,
    stop: int,
    clients: dict[int, Any],
    client_fields: Callable[[Any], Any],
    envelope: bytes,
    out: bytearray,
    /,
) -> int | None: ...
