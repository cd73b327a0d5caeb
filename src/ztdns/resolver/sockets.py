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
import socket
from collections.abc import Callable


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


OPEN = _Count()


class upstream_socket:  # lower case: used like a function in ``with``, as it was one
    """A new non-blocking socket, counted in :data:`OPEN` and closed however the ``with`` block ends.

    A class rather than ``contextlib.contextmanager``: every upstream exchange opens one, and a generator-based
    context manager costs a few microseconds more each time."""

    __slots__ = ("sock",)

    def __init__(self, family: int, kind: int) -> None:
        self.sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)  # non-blocking from the start: no fcntl
        OPEN.value += 1

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc_info: object) -> None:
        OPEN.value -= 1
        self.sock.close()


class reading:  # lower case: used like a function in ``with``, as upstream_socket
    """Call ``callback()`` whenever SOCK is readable, until the block ends (before the socket is closed)."""

    __slots__ = ("fd", "loop")

    def __init__(self, sock: socket.socket, callback: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, callback)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self.loop.remove_reader(self.fd)
