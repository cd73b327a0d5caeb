"""Listeners for the authority (UDP and TCP on one address) plus the key ticker and NOTIFY sender.

Used by tests and by ``ztdns authority serve``: they only move bytes; every decision is in
:class:`~ztdns.authority.service.Authority`. UDP is the shared :class:`~ztdns.transport.udp.UdpListener` (a lane
thread answering with ``Authority.fast``). TCP is its own small server because a zone transfer is several
messages for one request, which the one-response ``Handler`` contract cannot carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Coroutine
from typing import Any

import dns.asyncquery
import dns.exception
import dns.name
import dns.tsig

from ztdns.authority.service import Authority, ServedZone
from ztdns.authority.transfer import notify_message
from ztdns.client import ClientInfo, Transport
from ztdns.config.model import ListenConfig
from ztdns.transport.udp import UdpListener

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("!H")


class AuthorityServer:
    """UDP+TCP on ``host:port`` (port 0 picks a free one; see ``port``)."""

    def __init__(
        self,
        authority: Authority,
        host: str,
        port: int,
        tick_seconds: float = 1.0,
        notify_keyring: dict[dns.name.Name, dns.tsig.Key] | None = None,
        notify_keyname: dns.name.Name | None = None,
    ) -> None:
        self.authority = authority
        self.host, self.port = host, port
        self.tick_seconds = tick_seconds
        self.notify_keyring, self.notify_keyname = notify_keyring, notify_keyname
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: UdpListener | None = None
        self._tcp: asyncio.Server | None = None
        authority.on_change = self._schedule_notify

    async def start(self) -> None:
        self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self._udp = UdpListener(ListenConfig(transport="udp", address=address), self.authority, reuse_port=False)
        self._udp.start(asyncio.get_running_loop())
        self._spawn(self._ticker())

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.stop()
            if self._udp.pending:
                await asyncio.wait(list(self._udp.pending), timeout=2)
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("authority background task failed", exc_info=task.exception())

    async def _ticker(self) -> None:
        while True:
            try:
                self.authority.tick()
            except Exception:
                log.exception("key timeline tick failed")
            await asyncio.sleep(self.tick_seconds)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = ClientInfo(Transport.TCP, str(peer[0]), int(peer[1]), stream=True)
        try:
            while True:
                length = _LENGTH.unpack(await asyncio.wait_for(reader.readexactly(2), 10.0))[0]
                wire = await asyncio.wait_for(reader.readexactly(length), 10.0)
                for reply in self.authority.respond(wire, client):
                    writer.write(_LENGTH.pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("authority failed on a TCP connection")
        finally:
            writer.close()

    def _schedule_notify(self, zone: ServedZone) -> None:
        for host, port in zone.settings.notify:
            self._spawn(self._notify(zone, host, port))

    async def _notify(self, zone: ServedZone, host: str, port: int) -> None:
        # RFC 1996 §3.6: retry a few times with growing waits until the secondary acknowledges.
        for attempt in range(4):
            message = notify_message(zone.zone, self.notify_keyring, self.notify_keyname)
            try:
                await dns.asyncquery.udp(message, host, port=port, timeout=1.0 + attempt)
                return
            except (dns.exception.DNSException, OSError):
                await asyncio.sleep(0.5 * (attempt + 1))
        log.warning("secondary %s:%d did not acknowledge NOTIFY for %s", host, port, zone.origin)
