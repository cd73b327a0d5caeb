"""The recursion's network exchange: answers over UDP and TCP from a real loopback server, forged datagrams
dropped, and no socket left open when the waiting task is cancelled at any moment (a client going away cancels
its resolution), on uvloop as ``ztdns serve`` runs it."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import uvloop

from ztdns.resolver import sockets
from ztdns.resolver.upstream import IterativeQuery, NetworkExchange


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _query() -> IterativeQuery:
    return IterativeQuery.random(dns.name.from_text("www.example.test."), dns.rdatatype.A, 1232)


def _reply(wire: bytes, forged: bool = False) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(wire))
    if forged:
        response.id ^= 1
    return response.to_wire()


def test_udp_answer_after_forgeries_and_tcp_answer() -> None:
    async def run() -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def serve_udp() -> None:
            wire, peer = server.recvfrom(512)
            server.sendto(_reply(wire, forged=True), peer)
            server.sendto(_reply(wire), peer)

        async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            answer = _reply(await reader.readexactly(size))
            writer.write(struct.pack("!H", len(answer)) + answer)
            await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(serve_tcp, "127.0.0.1", 0)
        tcp_port = tcp.sockets[0].getsockname()[1]
        exchange = NetworkExchange()
        wire = _query().to_wire(edns=True)
        serving = asyncio.get_running_loop().run_in_executor(None, serve_udp)
        answer = await exchange.exchange(wire, "127.0.0.1", port, 2.0)
        await serving
        assert answer[:2] == wire[:2] and exchange.forged_dropped == 1
        answer = await exchange.exchange(wire, "127.0.0.1", tcp_port, 2.0, tcp=True)
        assert answer[:2] == wire[:2]
        assert exchange.open_sockets == 0
        tcp.close()
        server.close()

    uvloop.run(run())


def test_cancelled_exchanges_close_every_socket() -> None:
    """Hundreds of exchanges to servers that never answer (UDP) or never accept (TCP backlog full), cancelled
    after a random number of loop turns: open descriptors and ``open_sockets`` return to where they were."""

    async def run() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        exchange = NetworkExchange()
        rng = random.Random(7)
        baseline = _open_fds()
        for round_ in range(300):
            tcp = round_ % 3 == 0
            port = (listener if tcp else silent).getsockname()[1]
            task = asyncio.ensure_future(exchange.exchange(_query().to_wire(True), "127.0.0.1", port, 5.0, tcp=tcp))
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
                assert sockets.OPEN.value == exchange.open_sockets  # the process-wide gauge counts recursion's
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert exchange.open_sockets == 0 and sockets.OPEN.value == 0
        assert _open_fds() == baseline + exchange.pool.held  # and those the pool holds (opened ahead, or used)
        exchange.close()
        assert _open_fds() == baseline
        silent.close()
        listener.close()

    uvloop.run(run())


def test_timeouts_close_every_socket() -> None:
    async def run() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        exchange = NetworkExchange()
        baseline = _open_fds()
        results = await asyncio.gather(
            *(exchange.exchange(_query().to_wire(True), "127.0.0.1", silent.getsockname()[1], 0.05) for _ in range(50)),
            return_exceptions=True,
        )
        assert all(isinstance(result, TimeoutError) for result in results)
        assert exchange.open_sockets == 0 and _open_fds() == baseline + exchange.pool.held
        exchange.close()
        assert _open_fds() == baseline
        silent.close()

    uvloop.run(run())


def test_pooled_sockets_carry_one_query_each_and_start_empty() -> None:
    """The sockets opened ahead keep what a fresh socket per query gives: every query leaves from a port of its
    own, and a datagram that reached a pooled socket before its query was sent (a forgery planted in advance,
    from the server's own address, with the right ID and question) is never taken for the answer."""

    async def run() -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        address = server.getsockname()
        loop = asyncio.get_running_loop()
        exchange = NetworkExchange()
        ports, planted = set(), 0
        for _ in range(12):
            wire = _query().to_wire(edns=True)
            forged = dns.message.make_response(dns.message.from_wire(wire))
            forged.set_rcode(dns.rcode.NXDOMAIN)
            for ready in exchange.pool._ready.values():  # every socket the next query may take
                for sock in ready:
                    server.sendto(forged.to_wire(), sock.getsockname())
                    planted += 1
            task = asyncio.ensure_future(exchange.exchange(wire, address[0], address[1], 2.0))
            received, peer = await loop.run_in_executor(None, server.recvfrom, 512)
            assert received == wire
            ports.add(peer[1])
            server.sendto(_reply(received), peer)
            assert await task == _reply(received)
        assert len(ports) == 12 and planted > 0
        await asyncio.sleep(0)  # the pool's callback: used sockets closed, the next ones opened
        assert exchange.pool.held == exchange.pool.size
        exchange.close()
        assert exchange.pool.held == 0
        server.close()

    uvloop.run(run())


def test_closing_while_exchanges_are_under_way_leaves_no_socket() -> None:
    """A resolver replaced by a reload is closed with queries still under way: their sockets close as they are
    cancelled, and the pool opens no more."""

    async def run() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        exchange = NetworkExchange()
        baseline = _open_fds()
        port = silent.getsockname()[1]
        tasks = [
            asyncio.ensure_future(exchange.exchange(_query().to_wire(True), "127.0.0.1", port, 5.0)) for _ in range(6)
        ]
        for _ in range(3):
            await asyncio.sleep(0)
        exchange.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        assert exchange.open_sockets == 0 and exchange.pool.held == 0 and _open_fds() == baseline
        silent.close()

    uvloop.run(run())
