"""Do53 over UDP: one datagram in, one datagram out. Replays are answered inside ``datagram_received``."""

from __future__ import annotations

import asyncio
import logging
import socket

from ztdns.client import ClientInfo, Transport
from ztdns.config.model import ListenConfig
from ztdns.transport import Handler

log = logging.getLogger(__name__)

# Queries waiting for the pipeline (upstream, mostly). Beyond this, new slow queries are dropped rather than
# letting a flood of unique names grow memory without bound; replays are still answered.
MAX_PENDING = 10_000
_CLIENT_MEMO = 65_536


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self._clients: dict[tuple[str, int], ClientInfo] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = self._clients.get(addr)
        if client is None:
            if len(self._clients) >= _CLIENT_MEMO:
                self._clients.clear()
            client = self._clients[addr] = ClientInfo(Transport.UDP, addr[0], addr[1])
        answer = self.handler.fast(data, client)
        if answer is not None:
            assert self.transport is not None
            self.transport.sendto(answer, addr)
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._answer(data, client, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _answer(self, data: bytes, client: ClientInfo, addr: tuple[str, int]) -> None:
        answer = await self.handler.handle(data, client)
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier answers (client went away): nothing to do, and never fatal.
        log.debug("udp error: %s", exc)


async def start_udp(
    config: ListenConfig, handler: Handler, reuse_port: bool
) -> tuple[asyncio.DatagramTransport, UdpListener]:
    host, port = config.hostport()
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: UdpListener(handler), local_addr=(host, port), family=family, reuse_port=reuse_port or None
    )
    return transport, protocol
