"""Upstream sockets whose whole life is ours: created, registered with the event loop and closed in one ``with``
block, so that no cancellation point can leak one.

Why not ``loop.create_datagram_endpoint``: uvloop's, cancelled while it sets the endpoint up (a client that
disconnects during a cache miss cancels the query), leaves the socket open for ever (issue 12: 454 leaks in 500
DoT connect–query–close; at ``ulimit -n 1024`` every miss then failed). A plain non-blocking socket with
``add_reader`` has no such window: between ``socket()`` and the ``try`` there is no ``await``.

Used by the forwarder and by recursion's network exchange. Metrics: :data:`OPEN` is the
``ztdns_upstream_sockets_open`` gauge (every upstream socket open now; exported once by the frontend).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


OPEN = _Count()


@contextlib.contextmanager
def upstream_socket(family: int, kind: int) -> Iterator[socket.socket]:
    """A new non-blocking socket, counted in :data:`OPEN` and closed however the block ends."""
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)  # non-blocking from the start: no fcntl call
    OPEN.value += 1
    try:
        yield sock
    finally:
        OPEN.value -= 1
        sock.close()


@contextlib.contextmanager
def reading(sock: socket.socket, callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` whenever SOCK is readable, until the block ends (before the socket is closed)."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    loop.add_reader(fd, callback)
    try:
        yield
    finally:
        loop.remove_reader(fd)
