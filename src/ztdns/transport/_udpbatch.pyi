# The C extension _udpbatch.c: recvmmsg/sendmmsg for the UDP lane (transport/udp.py).
from collections.abc import Callable
from typing import Any

from ztdns.transport import Charged, Counted, PlainReplays

BATCH: int

def recv(fd: int, buffer: bytearray, size: int, /) -> list[tuple[bytes, bytes]]: ...
def send(fd: int, answers: list[tuple[bytes, bytes]], /) -> int: ...

# One batch with its plain replays answered in C (transport/udp.py, handler.py Frontend.plain_replays).
def serve(
    fd: int, buffer: bytearray, size: int, out: bytearray, plan: Callable[[], PlainReplays | None], /
) -> tuple[list[tuple[bytes, bytes]], Charged, Counted, float]: ...

# The plain replays of a batch (handler.py, Frontend.fast_batch; its pure-Python twin is handler.replay_run_in_python).
def replay_run(
    batch: list[tuple[bytes, Any]],
    start: int,
    peers: dict[Any, tuple[Any, bool, str | None, list[Any]]],
    memo: dict[Any, tuple[Any, bool, str | None]],
    tables: dict[str | None, dict[bytes, Any]],
    now: float,
    in_order: list[Any] | None,
    /,
) -> int: ...
