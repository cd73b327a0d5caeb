"""Do53 over UDP, with a fast lane: a thread per socket answers replays without touching the event loop.

Measured here, a blocking ``recvfrom``/``sendto`` loop in a thread moves ~1.7× the packets of the same code in
uvloop's ``datagram_received`` callbacks, because each callback pays for the loop's machinery. So the lane
thread reads every datagram and answers what ``Handler.fast`` can (replays: the bulk of traffic); everything
else is handed to the event loop with ``call_soon_threadsafe`` and answered from there on the same socket.

Two lanes do the same thing. The batched one (the default when the ``_udpbatch`` extension was built, see
``_udpbatch.c``) receives with ``recvmmsg`` whatever datagrams are queued, up to 64, and sends the answers of a
batch with one ``sendmmsg``: most of the lane's time was the two system calls per packet. The pure-Python one
(``recvfrom``/``sendto``) runs when the extension is absent or ``ZTDNS_UDP_BATCH=0`` is set in the environment;
tests/transport/test_udp_lanes.py holds the two to the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable

from ztdns.client import ClientInfo, Transport
from ztdns.config.listen import ListenConfig
from ztdns.transport import BatchHandler, Handler, Peer, ReplayHandler

try:
    from ztdns.transport import _udpbatch
except ImportError:  # built without a C compiler: the lane uses recvfrom/sendto
    _udpbatch = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Queries waiting for the pipeline (upstream, mostly). Beyond this, new slow queries are dropped rather than
# letting a flood of unique names grow memory without bound; replays are still answered.
MAX_PENDING = 10_000
_CLIENT_MEMO = 65_536
# The largest UDP query read: a receive buffer is allocated per packet, and 64 KiB of it costs ~0.3 µs each time.
# Real queries are far smaller; a longer datagram arrives cut, fails to parse and is answered FORMERR (messages
# that large — zone transfers, big updates — travel over TCP).
MAX_QUERY = 4096
_RECEIVE_BUFFER = 4 * 1024 * 1024
# Room per answer in the buffer ``_udpbatch.serve`` writes a batch's replayed answers into (a batch's answers share
# it: a larger one fits when others are smaller; one that does not fit is answered by ``fast_batch``).
ANSWER_ROOM = 4096

Address = tuple[str, int] | tuple[str, int, int, int]


def batching_available() -> bool:
    """The batched lane can run: the extension is built (and ``ZTDNS_UDP_BATCH=0`` does not turn it off)."""
    return _udpbatch is not None and os.environ.get("ZTDNS_UDP_BATCH", "1") != "0"


def sockaddr_address(name: bytes) -> Address:
    """The address tuple ``recvfrom`` gives for a raw ``sockaddr_in``/``sockaddr_in6`` as ``_udpbatch`` reads it."""
    port = int.from_bytes(name[2:4], "big")
    if int.from_bytes(name[:2], sys.byteorder) == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
    flowinfo = int.from_bytes(name[4:8], "big")
    return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flowinfo, int.from_bytes(name[24:28], sys.byteorder)


def _each(
    handler: Handler,
    batch: list[tuple[bytes, Peer]],
    client_of: Callable[[Peer], ClientInfo],
    answers: list[tuple[bytes, Peer]],
) -> list[tuple[bytes, Peer]]:
    """``BatchHandler.fast_batch`` for a handler without it: ``fast`` per datagram."""
    left = []
    for data, peer in batch:
        try:
            answer = handler.fast(data, client_of(peer))
        except Exception:  # never let one packet stop the lane
            log.exception("fast path failed")  # no address: client data leaves only through observe/
            answer = None
        if answer is None:
            left.append((data, peer))
        elif answer:  # b"": the handler decided to drop the query
            answers.append((answer, peer))
    return left


class UdpListener:
    def __init__(self, config: ListenConfig, handler: Handler, reuse_port: bool, batch: bool | None = None) -> None:
        """``batch``: use the batched lane (None: when :func:`batching_available`)."""
        self.handler = handler
        self.batch = batching_available() if batch is None else batch
        if self.batch and _udpbatch is None:
            raise RuntimeError("the _udpbatch extension is not built")
        host, port = config.hostport()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if reuse_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):  # a smaller buffer only means earlier drops under bursts
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        self.sock.bind((host, port))
        self.address = self.sock.getsockname()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: set[asyncio.Task[None]] = set()
        # Written by the lane thread only (submitted, dropped) or by the loop only (completed): no lost updates.
        self.submitted = 0
        self.completed = 0
        self.dropped = 0
        self.stopping = False
        lane = self._batched_lane if self.batch else self._lane
        self.thread = threading.Thread(target=lane, name=f"ztdns-udp-{port}", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread.start()

    def _lane(self) -> None:
        receive, send, fast = self.sock.recvfrom, self.sock.sendto, self.handler.fast
        clients: dict[tuple[str, int], ClientInfo] = {}
        while not self.stopping:
            try:
                data, addr = receive(MAX_QUERY)
            except OSError:
                continue
            client = clients.get(addr)
            if client is None:
                if len(clients) >= _CLIENT_MEMO:
                    clients.clear()
                client = clients[addr] = ClientInfo(Transport.UDP, addr[0], addr[1])
            try:
                answer = fast(data, client)
            except Exception:  # never let one packet stop the lane
                log.exception("fast path failed")  # no address: client data leaves only through observe/
                answer = None
            if answer is not None:
                if answer:  # b"": the handler decided to drop the query
                    # try/except, not contextlib.suppress: no context-manager object per packet.
                    try:  # noqa: SIM105
                        send(answer, addr)
                    except OSError:
                        pass
                continue
            if not self._submit(data, client, addr):
                break

    def _batched_lane(self) -> None:
        """The lane with ``recvmmsg``/``sendmmsg``: clients are remembered by their raw sockaddr bytes, and a
        batch is answered at once (``BatchHandler.fast_batch``) when the handler can. With a
        :class:`~ztdns.transport.ReplayHandler` the plain replays of a batch are answered in C as it is received
        (``_udpbatch.serve``), and only what is left goes through ``fast_batch``."""
        assert _udpbatch is not None
        receive, send, serve = _udpbatch.recv, _udpbatch.send, _udpbatch.serve
        handler = self.handler
        fast_batch = handler.fast_batch if isinstance(handler, BatchHandler) else functools.partial(_each, handler)
        replaying = handler if isinstance(handler, ReplayHandler) else None
        fd = self.sock.fileno()
        buffer = bytearray(_udpbatch.BATCH * MAX_QUERY)
        out = bytearray(_udpbatch.BATCH * ANSWER_ROOM)
        clients: dict[bytes, tuple[ClientInfo, Address]] = {}

        def known(name: bytes) -> tuple[ClientInfo, Address]:
            found = clients.get(name)
            if found is None:
                if len(clients) >= _CLIENT_MEMO:
                    clients.clear()
                addr = sockaddr_address(name)
                found = clients[name] = (ClientInfo(Transport.UDP, addr[0], addr[1]), addr)
            return found

        def client_of(name: bytes) -> ClientInfo:
            return known(name)[0]

        while not self.stopping:
            try:
                if replaying is None:
                    batch = receive(fd, buffer, MAX_QUERY)
                else:
                    batch, charged, counted, latency = serve(fd, buffer, MAX_QUERY, out, replaying.plain_replays)
                    if charged:  # answered and logged already: the charges and counts follow
                        replaying.replays_served(charged, counted, latency)
            except OSError:
                continue
            except Exception:  # never let one batch stop the lane (what serve received and left is lost)
                log.exception("fast path failed")  # no address: client data leaves only through observe/
                continue
            if not batch:
                continue
            answers: list[tuple[bytes, bytes]] = []
            try:
                left = fast_batch(batch, client_of, answers)
            except Exception:  # never let one batch stop the lane: the pipeline answers it
                log.exception("fast path failed")  # no address: client data leaves only through observe/
                answers, left = [], batch
            if answers:
                send(fd, answers)
            for data, name in left:
                if not self._submit(data, *known(name)):
                    self.stopping = True
                    break

    def _submit(self, data: bytes, client: ClientInfo, addr: Address) -> bool:
        """Hand a query the fast path did not answer to the event loop; False when the lane must stop."""
        if self.stopping:
            return False
        if self.submitted - self.completed >= MAX_PENDING:
            self.dropped += 1
            return True
        self.submitted += 1
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(self._schedule, data, client, addr)
        except RuntimeError:  # the loop is closed: we are shutting down
            return False
        return True

    def _schedule(self, data: bytes, client: ClientInfo, addr: Address) -> None:
        assert self.loop is not None
        task = self.loop.create_task(self._answer(data, client, addr))
        self.pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self.completed += 1

    async def _answer(self, data: bytes, client: ClientInfo, addr: Address) -> None:
        answer = await self.handler.handle(data, client)
        if answer is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(answer, addr)

    def stop(self) -> None:
        """Stop reading; answers still pending in the loop can be sent until ``close``."""
        self.stopping = True
        # Wake the lane from its blocking receive with an empty datagram to itself.
        with socket.socket(self.sock.family, socket.SOCK_DGRAM) as waker, contextlib.suppress(OSError):
            waker.sendto(b"", self.address)
        self.thread.join(timeout=2)

    def close(self) -> None:
        self.sock.close()
