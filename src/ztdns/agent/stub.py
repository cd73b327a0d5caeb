"""The stub resolver: the host's applications ask it, it asks the protective servers, opens the answered
addresses, and only then releases the answer.

:class:`StubHandler` is the logic (wire in, wire out); the UDP and TCP listeners below only move bytes, on
sockets of their own or handed over by socket activation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import NamedTuple, Protocol, cast

import dns.rcode

from ztdns.agent.allowstate import AllowState, scoped_key
from ztdns.agent.answers import BadMessage, addresses, ask_for_scope, blocking_reason, check_query, take_scope
from ztdns.agent.asker import Asker, Attribution
from ztdns.agent.cutoff import Cutoff
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.nft import NftError
from ztdns.agent.setwriter import SetWriter
from ztdns.agent.upstream import UpstreamError
from ztdns.config.base import parse_hostport
from ztdns.wire.grant_scope import PROTOCOL_NAMES
from ztdns.wire.header import error_response, payload_of, truncate, udp_limit

log = logging.getLogger("ztdns.agent.stub")


class Scope(Protocol):
    """Whose answers these are (a workload's): the connections to ask over, the state and sets to open."""

    @property
    def identity(self) -> str: ...
    @property
    def state(self) -> AllowState: ...
    @property
    def writer(self) -> SetWriter: ...
    @property
    def upstreams(self) -> Upstream: ...


class Upstream(Protocol):
    async def query(self, wire: bytes) -> bytes:
        """The response to ``wire`` with its message ID, or UpstreamError."""
        ...


Release = Callable[[bytes], None]


class Peer(NamedTuple):
    """Who sent a query: the transport, the stub's own address and the client's."""

    protocol: str  # "udp" or "tcp"
    local: tuple[str, int]
    remote: tuple[str, int]


# A refused answer, with the resolver's reason: (name, who asked, EDE code and text); done once it was recorded.
Blocked = Callable[[str, "list[Asker | None]", int, str], Awaitable[None]]


class StubHandler:
    def __init__(
        self,
        upstreams: Upstream,
        state: AllowState,
        writer: SetWriter,
        metrics: AgentMetrics,
        identity: str,
        on_error: Callable[[str], None],
        attribution: Attribution | None = None,
        on_blocked: Blocked | None = None,
        scope_of: Callable[[Peer], Scope | None] | None = None,
        cutoff: Cutoff | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._state = state
        self._writer = writer
        self._metrics = metrics
        self._identity = identity
        self._on_error = on_error
        self._attribution = attribution
        self._on_blocked = on_blocked
        self._scope_of = scope_of
        self._cutoff = cutoff  # [cutoff]: refuse an identity's queries while a detection verdict is about it

    async def handle(self, query: bytes, release: Release, peer: Peer | None = None) -> bool:
        """Relay ``query``: ``release`` gets the response once the application may have it — after the set
        commit that opens its addresses. False (and nothing released) for a packet that is not a query.
        ``peer``: who asked, looked up (socket, uid, cgroup) while the query is upstream.
        """
        try:
            check_query(query)
            # Every query asks for the grant scope: a port-scoped allow rule must never open every port.
            upstream_query, added_opt = ask_for_scope(query)
        except BadMessage as exc:
            log.debug("dropped: %s", exc)
            return False
        asker: list[Asker | None] = []
        if peer is not None and self._attribution is not None:
            asker = self._attribution.look_up_soon(peer.protocol, peer.local, peer.remote)
        metrics = self._metrics
        upstreams, state, writer, identity = self._upstreams, self._state, self._writer, self._identity
        if self._scope_of is not None and peer is not None:
            scope = self._scope_of(peer)  # a workload's: its identity upstream, its own sets
            if scope is not None:
                upstreams, state, writer, identity = scope.upstreams, scope.state, scope.writer, scope.identity
        cutoff = self._cutoff
        if cutoff is not None:
            refusal = cutoff.refusal(identity, query)
            if refusal is not None:
                release(refusal)
                return True
        try:
            response = await upstreams.query(upstream_query)
        except UpstreamError as exc:
            metrics.upstream_failures += 1
            metrics.servfail += 1
            self._on_error(f"no protective server answered: {exc}")
            release(error_response(query, dns.rcode.SERVFAIL))
            return True
        started = time.perf_counter()
        try:
            answer = addresses(response)
            ports, released = take_scope(response, added_opt)
        except BadMessage as exc:
            metrics.servfail += 1
            self._on_error(f"bad upstream response: {exc}")
            release(error_response(query, dns.rcode.SERVFAIL))
            return True
        if not answer.records:
            metrics.relayed += 1
            metrics.observe_plumbing(time.perf_counter() - started)
            # NXDOMAIN/REFUSED, or a NODATA that carries an EDE option (code 15: its bytes are a cheap pre-filter).
            if (self._on_blocked is not None or cutoff is not None) and (answer.rcode or b"\x00\x0f" in response):
                reason = blocking_reason(response)
                if reason is not None and cutoff is not None:
                    cutoff.observe(identity, *reason)
                if reason is not None and self._on_blocked is not None:
                    # Recorded before the refusal is released, while the asker (often a short-lived dig or
                    # curl) still exists to be named: a refused answer may wait a few milliseconds, no other does.
                    await self._on_blocked(answer.name, asker, *reason)
            release(released)
            return True
        # Every answer of this event-loop turn goes into the same update: one transaction for all of them. The
        # commit releases the answers itself (no future and task wake-up per answer).
        records = answer.records
        if ports:  # one grant per (address, protocol, port): the scoped sets hold exactly those
            records = [
                (scoped_key(address, PROTOCOL_NAMES[protocol], port), ttl)
                for address, ttl in records
                for protocol, port in ports
            ]
        state.answer(answer.name, records, time.time(), identity, writer.pending())
        settle = partial(self._settle, query, released, answer.name, started, release, asker, answer.records)
        writer.after_commit(settle)
        return True

    def _settle(
        self,
        query: bytes,
        response: bytes,
        name: str,
        started: float,
        release: Release,
        asker: list[Asker | None],
        records: list[tuple[str, int]],
        failure: NftError | None,
    ) -> None:
        metrics = self._metrics
        if failure is not None:
            # Fail closed: the application must not get an address the firewall does not let it reach.
            metrics.set_failures += 1
            metrics.servfail += 1
            self._on_error(f"set update failed for {name}: {failure}")
            release(error_response(query, dns.rcode.SERVFAIL))
            return
        metrics.opened += 1
        metrics.observe_plumbing(time.perf_counter() - started)
        release(response)
        if asker and self._attribution is not None:
            self._attribution.record(asker, name, records, time.time())

    async def ask(self, query: bytes) -> bytes | None:
        """The response :meth:`handle` releases for ``query``, or None for a packet that is not a query."""
        released: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if not await self.handle(query, released.set_result):
            return None
        return await released


class ClientFilter:
    """Who may ask the stub: loopback, and the configured client networks (``stub.clients``); others get no
    answer at all (an answer would carry the host's identity and open the host's egress). One dict lookup per
    query for a source seen before."""

    def __init__(self, networks: list[str], metrics: AgentMetrics) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._metrics = metrics
        self._known: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        allowed = self._known.get(address)
        if allowed is None:
            allowed = self._check(address)
            if len(self._known) >= 65_536:
                self._known.clear()
            self._known[address] = allowed
        if not allowed:
            self._metrics.refused_clients += 1
        return allowed

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or any(ip in network for network in self._networks)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: StubHandler, tasks: set[asyncio.Task[bool]], clients: ClientFilter) -> None:
        self._handler = handler
        self._tasks = tasks
        self._clients = clients
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport, though it is one.
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self._local = (str(sockname[0]), int(sockname[1]))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self._clients.allows(str(addr[0])):
            return
        peer = Peer("udp", self._local, (str(addr[0]), int(addr[1])))
        handling = self._handler.handle(data, partial(self._send, data, addr), peer)
        task = asyncio.get_running_loop().create_task(handling)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, query: bytes, addr: tuple[str | int, ...], response: bytes) -> None:
        if self._transport is None:
            return
        # Parsing the query's EDNS size only matters for responses that do not fit the classic 512 octets.
        if len(response) > 512 and len(response) > udp_limit(payload_of(query), 65535):
            response = truncate(response)
        self._transport.sendto(response, addr)


async def _serve_tcp_connection(
    handler: StubHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_timeout: float
) -> None:
    tasks: set[asyncio.Task[bool]] = set()
    local, remote = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    peer = Peer("tcp", (str(local[0]), int(local[1])), (str(remote[0]), int(remote[1]))) if local and remote else None

    def send(response: bytes) -> None:
        if not writer.is_closing():
            writer.write(struct.pack("!H", len(response)) + response)

    try:
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), idle_timeout))[0]
            query = await asyncio.wait_for(reader.readexactly(size), idle_timeout)
            task = asyncio.get_running_loop().create_task(handler.handle(query, send, peer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()


_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first handed-over descriptor


def activated_sockets() -> list[socket.socket]:
    """The sockets a service manager handed over (systemd socket activation: ``LISTEN_FDS`` descriptors from 3 on,
    for the process ``LISTEN_PID``). Held by the manager across restarts, they keep receiving while no agent runs:
    queries sent in a restart's gap wait in their buffers and are answered once the new agent listens. The
    variables are removed so that child processes do not take them for theirs."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    return [socket.socket(fileno=_LISTEN_FDS_START + index) for index in range(count)]


def _take(sockets: list[socket.socket], kind: int, host: str, port: int) -> socket.socket | None:
    """Remove and return the socket of ``kind`` bound to ``host``:``port`` from ``sockets``, if there is one."""
    wanted = (str(ipaddress.ip_address(host)), port)
    for candidate in sockets:
        bound = candidate.getsockname()
        if candidate.type == kind and (str(ipaddress.ip_address(bound[0])), int(bound[1])) == wanted:
            sockets.remove(candidate)
            return candidate
    return None


_SO_RCVBUFFORCE = 33
_RECEIVE_BUFFER = 4 << 20


def _large_receive_buffer(sock: socket.socket | None) -> None:
    """Room for bursts: the default buffer (≈ 200 KiB) holds only ≈ 300 queries, a 30 ms stall at 10k names/s
    (datagrams beyond it are dropped by the kernel and the application retries a second later)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)  # beyond rmem_max: CAP_NET_ADMIN
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)


class StubListeners:
    """UDP and TCP on every configured address, answering the clients ``clients`` allows."""

    def __init__(
        self, handler: StubHandler, listen: list[str], clients: ClientFilter, idle_timeout: float = 30.0
    ) -> None:
        self._handler = handler
        self._listen = listen
        self._clients = clients
        self._idle_timeout = idle_timeout
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        """Listen on every configured address: on a socket handed over by socket activation when one is bound
        there (see :func:`activated_sockets`), else on a new one."""
        loop = asyncio.get_running_loop()
        inherited = activated_sockets()
        for address in self._listen:
            host, port = parse_hostport(address, 53)
            udp = _take(inherited, socket.SOCK_DGRAM, host, port)
            factory = partial(_UdpProtocol, self._handler, self._tasks, self._clients)
            if udp is not None:
                transport, _ = await loop.create_datagram_endpoint(factory, sock=udp)
            else:
                transport, _ = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
            _large_receive_buffer(transport.get_extra_info("socket"))
            self._transports.append(transport)
            tcp = _take(inherited, socket.SOCK_STREAM, host, port)
            if tcp is not None:
                server = await asyncio.start_server(self._accept, sock=tcp)
            else:
                server = await asyncio.start_server(self._accept, host, port)
            self._servers.append(server)
        for unused in inherited:
            log.warning("socket activation: %s is not a stub address in stub.listen; closed", unused.getsockname())
            unused.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or not self._clients.allows(str(peer[0])):
            writer.close()
            return
        await _serve_tcp_connection(self._handler, reader, writer, self._idle_timeout)

    async def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
