# The C extension _lines.c: the ring of query records (observe/ring.py), native query log lines and dnstap frames
# of a batch (observe/formats.py, dnstap.py).
from collections.abc import Callable
from typing import Any

RECORD_SIZE: int

class Records:
    dropped: int
    capacity: int
    def __init__(self, capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def add(
        self, when: float, latency: float, client: Any, answer: Any, query: bytes, response: bytes | None, /
    ) -> bool: ...
    def add_replies(self, when: float, latency: float, client: Any, replies: list[Any], /) -> int: ...
    def add_event(self, event: Any, /) -> bool: ...
    def take(self) -> tuple[int, bytes, bytes, list[Any]] | None: ...

def native(
    batch: list[Any] | tuple[bytes, bytes, list[Any], list[Any]],
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
    batch: list[Any] | tuple[bytes, bytes, list[Any], list[Any]],
    start: int,
    stop: int,
    clients: dict[int, Any],
    client_fields: Callable[[Any], Any],
    envelope: bytes,
    out: bytearray,
    /,
) -> int | None: ...
