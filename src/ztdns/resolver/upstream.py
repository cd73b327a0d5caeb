"""Recursion's network exchange: iterative queries rendered to wire, the echo check that decides which datagrams
answer them, and the :class:`Exchange` that carries one query to one authoritative server.

The exchange is injected into :class:`~ztdns.resolver.recursive.RecursiveResolver`: :class:`NetworkExchange` talks
UDP/TCP; tests feed scripted or recorded answers through their own (tests/replay). Every socket the network
exchange opens is closed on every path, cancellation included (a client that goes away cancels the resolution):
its sockets come from :mod:`ztdns.resolver.sockets`, as the forwarder's do (so ``ztdns_upstream_sockets_open``
counts both); ``open_sockets`` counts recursion's own (``ztdns_recursion_upstream_sockets``).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from ztdns.resolver.sockets import SocketPool, reading, upstream_socket
from ztdns.wire.parse import known_name

EDNS_PAYLOAD = 1232  # default UDP payload size advertised upstream (DNS Flag Day 2020)
_TCP_MAX = 65535


class Exchange(Protocol):
    """Carries one query to one server and returns the response that answers it (the echo check passed).

    Failures raise: ``TimeoutError`` (no answer in time), ``OSError`` (unreachable, refused, reset) or
    :class:`ForgedAnswer` (a TCP answer that is not ours)."""

    async def exchange(self, query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes: ...


class ForgedAnswer(Exception):
    pass


# Errors may come back without the question: servers that reject EDNS answer FORMERR with an empty question.
_QUESTION_OPTIONAL = frozenset({dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED})


def echoes(query: bytes, response: bytes) -> bool:
    """Is ``response`` an answer to ``query`` (one question, ours): same ID, QR set, opcode QUERY and the question
    echoed byte for byte — the 0x20 case, type and class included? Errors without a question pass: they carry
    no data. Works on the wire, before any parsing (forgeries cost no parse)."""
    if len(response) < 12 or response[:2] != query[:2]:
        return False
    if not response[2] & 0x80 or response[2] & 0x78:  # QR clear, or an opcode other than QUERY
        return False
    count = response[4:6]
    if count == b"\x00\x00":
        return response[3] & 0x0F in _QUESTION_OPTIONAL
    end = _question_end(query)
    return count == b"\x00\x01" and response[12:end] == query[12:end]


def _question_end(query: bytes) -> int:
    """End of the (uncompressed) question of a query we rendered."""
    offset = 12
    while query[offset]:
        offset += query[offset] + 1
    return offset + 5  # root label, type, class


def randomise_case(name: dns.name.Name, noise: bytes | None = None) -> dns.name.Name:
    """0x20: every letter's case flipped by its own random bit.

    The bits, like query IDs, come from the operating system's CSPRNG (``secrets``): the ``random`` module's
    generator can be reconstructed from its outputs, and an attacker who can predict them only has to guess the
    source port to forge an answer. ``noise``: random bytes from it, at least one per octet of the labels (drawn
    here when not given). The labels joined, as integers: (random bits) AND (0x20 at each letter) XOR labels."""
    labels = name.labels
    joined = b"".join(labels)
    size = len(joined)
    if noise is None:
        noise = secrets.token_bytes(size)
    mask = int.from_bytes(joined.translate(_CASE_BIT), "big") & int.from_bytes(noise[:size], "big")
    flipped = (int.from_bytes(joined, "big") ^ mask).to_bytes(size, "big")
    cased = []
    start = 0
    for label in labels:
        end = start + len(label)
        cased.append(flipped[start:end])
        start = end
    # Through the parser's name memo: built without dnspython's constructor machinery, and the very Name the
    # response's question and owners (which echo this case) are then read into.
    return known_name(tuple(cased))[0]


# 0x20 at the octets that are ASCII letters (the bit that flips their case), 0 elsewhere.
_CASE_BIT = bytes(0x20 if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A else 0 for c in range(256))


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__ (slower)
class IterativeQuery:
    """One iterative query, rendered straight to wire: ID, the 0x20-cased name, type; RD clear, class IN.

    Building it from a template instead of a dnspython Message saves most of the per-query CPU."""

    id: int
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    payload: int = EDNS_PAYLOAD

    @classmethod
    def random(cls, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, payload: int) -> IterativeQuery:
        # One draw (a system call) for the ID and the case of every octet a name can have (255 at most).
        noise = secrets.token_bytes(2 + 255)
        return cls(int.from_bytes(noise[:2], "big"), randomise_case(name, noise[2:]), rdtype, payload)

    def to_wire(self, edns: bool, checking_disabled: bool = False) -> bytes:
        flags = dns.flags.CD if checking_disabled else 0
        header = struct.pack("!HHHHHH", self.id, flags, 1, 0, 0, 1 if edns else 0)
        name = self.name.to_wire()
        assert name is not None  # without a file to write to, to_wire returns the bytes
        question = name + struct.pack("!HH", self.rdtype, dns.rdataclass.IN)
        if not edns:
            return header + question
        # OPT: root owner, type 41, our UDP payload size, DO set, no options.
        return header + question + b"\x00" + struct.pack("!HHBBHH", dns.rdatatype.OPT, self.payload, 0, 0, 0x8000, 0)


class NetworkExchange:
    """UDP on a connected socket of its own per query (a random source port the kernel picks), TCP when asked.

    The UDP sockets are opened ahead of use by a small :class:`~ztdns.resolver.sockets.SocketPool` (each still
    carries one query and is closed after it). The connected socket only receives datagrams from the server's
    address and port. Anything else arriving on it — another ID, or the question echoed in another case than we
    sent (0x20) — is a forgery (or garbage): it is counted and dropped, and we keep waiting for the real answer
    until the timeout, so a flood of forgeries can neither poison nor abort the query."""

    def __init__(self, sources: tuple[str, ...] = ()) -> None:
        self.sources = sources  # local addresses to send from (each family its first); none: the kernel picks
        self.open_sockets = 0
        self.forged_dropped = 0
        self.pool = SocketPool()

    async def exchange(self, query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        source = self._source(family)
        if tcp:
            with upstream_socket(family, socket.SOCK_STREAM) as sock:
                self.open_sockets += 1
                try:
                    if source is not None:
                        sock.bind((source, 0))
                    async with asyncio.timeout(timeout):
                        return await self._tcp(sock, query, address, port)
                finally:
                    self.open_sockets -= 1
        with self.pool.take(family, source, (address, port)) as sock:
            self.open_sockets += 1
            try:
                return await self._udp(sock, query, timeout)
            finally:
                self.open_sockets -= 1

    def close(self) -> None:
        """Close the sockets held ahead or after use (those in use close when their exchange ends)."""
        self.pool.close()

    def _source(self, family: int) -> str | None:
        for source in self.sources:
            if (":" in source) == (family == socket.AF_INET6):
                return source
        return None

    async def _udp(self, sock: socket.socket, query: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        sock.send(query)
        answered: asyncio.Future[bytes] = loop.create_future()
        # A timer on the future rather than asyncio.timeout (which reschedules and cancels the task): the
        # same TimeoutError, for less work on every exchange.
        timer = loop.call_later(timeout, _time_out, answered)

        def readable() -> None:
            while not answered.done():
                try:
                    wire = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # ICMP port unreachable and the like
                    answered.set_exception(exc)
                    return
                if echoes(query, wire):
                    answered.set_result(wire)
                else:
                    self.forged_dropped += 1

        try:
            with reading(sock, readable):
                return await answered
        finally:
            timer.cancel()

    async def _tcp(self, sock: socket.socket, query: bytes, address: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (address, port))
        await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", await _read(loop, sock, 2))[0]
        wire = await _read(loop, sock, size)
        if not echoes(query, wire):
            self.forged_dropped += 1
            raise ForgedAnswer(f"TCP answer from {address} does not match the query")
        return wire


def _time_out(answered: asyncio.Future[bytes]) -> None:
    if not answered.done():
        answered.set_exception(TimeoutError())


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, min(size - len(data), _TCP_MAX))
        if not chunk:
            raise ConnectionResetError("connection closed mid-answer")
        data += chunk
    return data
