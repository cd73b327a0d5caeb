"""Upstream sockets whose whole life is ours: created, registered with the event loop and closed in one ``with``
block, so that no cancellation point can leak one.

Why not ``loop.create_datagram_endpoint``: uvloop's, cancelled while it sets the endpoint up (a client that
disconnects during a cache miss cancels the query), leaves the socket open for ever (issue 12: 454 leaks in 500
DoT connect–query–close; at ``ulimit -n 1024`` every miss then failed). A plain non-blocking socket with
``add_reader`` has no such window: between ``socket()`` and the ``try`` there is no ``await``.

Used by the forwarder and by recursion's network exchange; recursion takes its UDP sockets from a
:class:`SocketPool` (opened ahead of use, each still used for one query). Metrics: :data:`OPEN` is the
``ztdns_upstream_sockets_open`` gauge (every upstream socket in use by an exchange now, exported once by the
frontend); a pool's idle sockets are counted by the pool (``SocketPool.held``).
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


class SocketPool:
    """UDP sockets opened ahead of the queries that use them (``size`` per family and source address in use), and
    closed after them, both off the path of a client's answer.

    Opening a socket (``socket`` and ``bind``) and closing it cost system calls that took 3-4 % of a cold
    pass's CPU, between a client's question and its answer; the pool closes used sockets and opens the
    next ones from a callback that runs once the query that took a socket is waiting for its answer (or the
    client has been answered). Security is that of a fresh socket per query: each
    socket is bound to a source port the kernel picks at random when it is opened (as ``connect`` on an unbound
    socket would), carries one query only and is closed after it; :meth:`take` connects it to the server and
    discards anything that reached it while it waited unconnected (nothing sent before our query can answer it),
    so from then on the kernel delivers only the server's datagrams. The pool stays small: an idle socket is
    one more open port for an attacker to find, for the time between two queries."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._ready: dict[tuple[int, str | None], list[socket.socket]] = {}
        self._used: list[socket.socket] = []  # done with, to be closed
        self._refill_due = False
        self._closed = False  # after close(): every socket is opened when taken and closed when given back
        self.held = 0  # sockets open and not in use: ready, or used and not closed yet

    def take(self, family: int, source: str | None, server: tuple[str, int]) -> pooled_socket:
        """A socket connected to ``server`` (from ``source`` when given) for the ``with`` block, counted in
        :data:`OPEN` and given back however the block ends; a fresh one when the pool has none ready."""
        ready = self._ready.setdefault((family, source), [])
        if ready:
            sock = ready.pop()
            self.held -= 1
        else:
            sock = _bound(family, source)
        self._refill_soon()
        return pooled_socket(self, sock, server)

    def give_back(self, sock: socket.socket) -> None:
        """A socket whose query is over (no reader left on it): closed soon."""
        if self._closed:
            sock.close()
            return
        self._used.append(sock)
        self.held += 1
        self._refill_soon()

    def _refill_soon(self) -> None:
        if not self._refill_due and not self._closed:
            self._refill_due = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_due = False
        used, self._used = self._used, []
        for sock in used:
            sock.close()
        self.held -= len(used)
        if self._closed:  # scheduled before close()
            return
        for (family, source), ready in self._ready.items():
            while len(ready) < self.size:
                try:
                    ready.append(_bound(family, source))
                except OSError:  # out of descriptors or ports: queries open their own meanwhile
                    return
                self.held += 1

    def close(self) -> None:
        """Close every socket held; exchanges still under way (being cancelled) close theirs when they end."""
        self._closed = True
        for sock in self._used:
            sock.close()
        self._used.clear()
        for ready in self._ready.values():
            for sock in ready:
                sock.close()
            ready.clear()
        self.held = 0


def _bound(family: int, source: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sock.bind((source or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))  # a random port, now
    except BaseException:
        sock.close()
        raise
    return sock


class pooled_socket:  # lower case: used like a function in ``with``, as upstream_socket
    """A pool's socket connected to one server for one query; uncounted and given back to be closed when the block
    ends."""

    __slots__ = ("pool", "server", "sock")

    def __init__(self, pool: SocketPool, sock: socket.socket, server: tuple[str, int]) -> None:
        self.pool = pool
        self.sock = sock
        self.server = server
        OPEN.value += 1

    def __enter__(self) -> socket.socket:
        sock = self.sock
        try:
            sock.connect(self.server)
            while True:  # datagrams that reached the port before the connect: not answers to our query
                sock.recv(1)
        except (BlockingIOError, InterruptedError):  # none left (not contextlib.suppress: it costs more)
            return sock
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc_info: object) -> None:
        OPEN.value -= 1
        self.pool.give_back(self.sock)


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
