"""Forwarding to upstreams: Do53 (UDP first, TCP when the answer is truncated) and encrypted DoT, DoH and DoQ
(over the reused connections of :mod:`ztdns.resolver.encrypted`), several upstreams with health.

Sans-IO parts, tested with bytes: :func:`build_query` (random ID, RD, EDNS, DO/CD), :class:`ReplyFilter` /
:func:`reply_matches` (is this datagram the answer to that query?) and :class:`~ztdns.resolver.health.HealthBook`
(which upstream to try, when to hold one down). The I/O here only moves bytes.

Spoofing defences: every attempt is a new query with a random 16-bit ID (``secrets``) sent from a new UDP socket
whose source port the kernel picks at random; the socket is connected, so the kernel drops datagrams from other
peers and reports ICMP unreachable, and the peer is checked again here. A datagram that is not the answer (other
peer, ID, question, QR=0, or garbage) is ignored and the wait goes on, so a spoofer cannot end the exchange early.
Encrypted upstreams are authenticated by TLS; their answers still go through the same :class:`ReplyFilter`.

Do53 sockets are plain non-blocking sockets opened and closed in one block (:mod:`ztdns.resolver.sockets`), so a
query cancelled at any point (its client went away) cannot leak one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config.resolver import ResolverConfig, UpstreamConfig
from ztdns.model import EDE, Question, Reason, Resolution
from ztdns.resolver import encrypted
from ztdns.resolver.health import HealthBook, UpstreamHealth
from ztdns.resolver.sockets import reading, upstream_socket

_HEADER = struct.Struct("!HHH")  # ID, flags, QDCOUNT: the start of the 12-byte header
_HEADER_SIZE = 12
_OPCODE_BITS = 0x7800
_LENGTH = struct.Struct("!H")  # TCP length prefix (RFC 1035 4.2.2)

# Rcodes that say "not from me" rather than answering about the name: try another upstream and count a failure.
# SERVFAIL is different: the upstream is alive and usually fails for this name only, so it is kept as the answer
# of last resort and does not count against the upstream's health.
_REFUSALS = frozenset({dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP})

# Queries on encrypted upstreams are padded to a multiple of this (RFC 8467 section 4.1, block-length padding),
# so their length does not give the name away.
QUERY_PADDING_BLOCK = 128


def build_query(question: Question, edns_payload: int, pad: int = 0) -> dns.message.QueryMessage:
    """The upstream query for ``question``: random ID, RD=1, EDNS(0) with ``edns_payload``, DO and CD as asked,
    EDNS padding to a multiple of ``pad`` octets when it is not 0."""
    query = dns.message.make_query(
        question.name,
        dns.rdatatype.RdataType.make(question.rdtype),
        dns.rdataclass.RdataClass.make(question.rdclass),
        use_edns=0,
        want_dnssec=question.dnssec_ok,
        payload=edns_payload,
        pad=pad,
    )
    query.id = secrets.randbits(16)
    if question.checking_disabled:
        query.flags |= dns.flags.CD
    return query


class ReplyFilter:
    """What the answer to one query must look like, precomputed from the query's wire form: same ID, QR=1, same
    opcode, and exactly the same question (name case-insensitively, type, class).

    :meth:`matches` reads the header and question bytes only, so a flood of spoofed datagrams costs no parse. The
    question is compared as bytes: a reply's first name cannot be compressed (there is nothing before it to point
    to), and label lengths (< 64) never fall in the A–Z range that ``bytes.lower`` touches. The caller checks the
    peer address."""

    __slots__ = ("_end", "_ident", "_name", "_opcode", "_type_class")

    def __init__(self, query_wire: bytes) -> None:
        self._ident, flags, _ = _HEADER.unpack_from(query_wire)
        self._opcode = flags & _OPCODE_BITS
        end = _HEADER_SIZE
        while query_wire[end]:  # our own query: an uncompressed name
            end += query_wire[end] + 1
        end += 1
        self._name = query_wire[_HEADER_SIZE:end].lower()
        self._type_class = query_wire[end : end + 4]
        self._end = end + 4

    def matches(self, reply_wire: bytes) -> bool:
        if len(reply_wire) < self._end:
            return False
        ident, flags, qdcount = _HEADER.unpack_from(reply_wire)
        return (
            ident == self._ident
            and bool(flags & dns.flags.QR)
            and flags & _OPCODE_BITS == self._opcode
            and qdcount == 1
            and reply_wire[self._end - 4 : self._end] == self._type_class
            and reply_wire[_HEADER_SIZE : self._end - 4].lower() == self._name
        )

    def decode(self, reply_wire: bytes) -> dns.message.Message | None:
        """The parsed answer, or None when ``reply_wire`` does not match or does not parse."""
        if not self.matches(reply_wire):
            return None
        try:
            return dns.message.from_wire(reply_wire)
        except Exception:  # dnspython raises many types on garbage; all of them mean "not an answer"
            return None


def reply_matches(query: dns.message.Message, reply_wire: bytes) -> bool:
    """Whether ``reply_wire`` is the answer to ``query`` (see :class:`ReplyFilter`)."""
    return ReplyFilter(query.to_wire()).matches(reply_wire)


def decode_reply(query: dns.message.Message, reply_wire: bytes) -> dns.message.Message | None:
    """The parsed answer to ``query``, or None when ``reply_wire`` does not match it or does not parse."""
    return ReplyFilter(query.to_wire()).decode(reply_wire)


def is_truncated(reply_wire: bytes) -> bool:
    """TC=1 in a reply that :meth:`ReplyFilter.matches` accepted (so the header is there)."""
    return bool(_HEADER.unpack_from(reply_wire)[1] & dns.flags.TC)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UpstreamError(Exception):
    """One attempt failed; ``str()`` says how (for EDE text), ``ede`` what it means for the client."""

    def __init__(self, text: str, ede: EDE) -> None:
        super().__init__(text)
        self.ede = ede


def _network_error(exc: BaseException, prefix: str) -> UpstreamError:
    """``prefix`` names the fallback the error happened in ("tcp "), or is empty."""
    if isinstance(exc, TimeoutError):
        return UpstreamError(f"{prefix}timeout", EDE.NO_REACHABLE_AUTHORITY)
    if isinstance(exc, asyncio.IncompleteReadError):
        return UpstreamError(f"{prefix}connection closed", EDE.NETWORK_ERROR)
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    return UpstreamError(f"{prefix}{text.lower()}", EDE.NETWORK_ERROR)


class Peer:
    """An upstream's socket address, with the normalised form used to check where datagrams came from."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.ip = ipaddress.ip_address(host)
        self.canonical = str(self.ip)  # the text form the kernel reports source addresses in
        self.family = socket.AF_INET6 if self.ip.version == 6 else socket.AF_INET
        self.label = format_address(host, port)

    def sent(self, addr: Any) -> bool:
        try:
            if addr[1] != self.port:
                return False
            return addr[0] == self.canonical or ipaddress.ip_address(addr[0]) == self.ip
        except (ValueError, TypeError, IndexError):
            return False


class UdpExchange:
    """Waits on one connected UDP socket for the datagram that answers ``query`` (sans-IO: the forwarder feeds it
    what the socket reads).

    ``reply`` resolves to the parsed message, or to None when the answer matched but was truncated (TC=1)."""

    def __init__(self, expected: ReplyFilter, peer: Peer) -> None:
        self.expected = expected
        self.peer = peer
        self.reply: asyncio.Future[dns.message.Message | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.reply.done() or not self.peer.sent(addr) or not self.expected.matches(data):
            return
        if is_truncated(data):
            self.reply.set_result(None)
            return
        message = self.expected.decode(data)
        if message is not None:
            self.reply.set_result(message)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket this is ICMP unreachable (connection refused) or a local send error.
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionAbortedError("socket closed"))

    def read_from(self, sock: socket.socket) -> None:
        """Everything SOCK has queued (called when it is readable)."""
        while not self.reply.done():
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self.datagram_received(data, addr)


def _settle(reply: asyncio.Future[Any]) -> None:
    """An exchange is over: cancel its reply if nobody set it, or mark an exception nobody awaited as seen."""
    if not reply.done():
        reply.cancel()
    elif not reply.cancelled():
        reply.exception()


class TcpExchange:
    """Reads length-prefixed frames from one TCP connection until one answers ``query``; ``reply`` resolves to it.
    A frame that is not the answer is skipped; the connection closing first is an IncompleteReadError."""

    def __init__(self, expected: ReplyFilter) -> None:
        self.expected = expected
        self.buffer = bytearray()
        self.reply: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()

    def read_from(self, sock: socket.socket) -> None:
        if self.reply.done():
            return
        try:
            data = sock.recv(65537)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.reply.set_exception(exc)
            return
        if not data:
            self.reply.set_exception(asyncio.IncompleteReadError(bytes(self.buffer), None))
            return
        self.buffer += data
        while len(self.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < _LENGTH.size + length:
                return
            frame = bytes(self.buffer[_LENGTH.size : _LENGTH.size + length])
            del self.buffer[: _LENGTH.size + length]
            reply = self.expected.decode(frame)
            if reply is not None:
                self.reply.set_result(reply)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionAbortedError("socket closed"))


# An attempt shorter than this cannot get an answer from anything but loopback: not worth a socket.
MIN_ATTEMPT_SECONDS = 0.01


EncryptedClient = encrypted.DotUpstream | encrypted.DohUpstream | encrypted.DoqUpstream


class UpstreamSetupError(ValueError):
    """An encrypted upstream's TLS files cannot be used; ``key`` is the config key at fault (``("resolver",
    "upstreams", 0, "ca")``), for file:line errors."""

    def __init__(self, message: str, key: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Upstream:
    """One configured upstream: its address, its label (health, metrics, EDE text) and, when encrypted, the
    client that keeps its connection."""

    peer: Peer
    label: str  # "192.0.2.53:53", "tls://192.0.2.53:853", "https://192.0.2.53:443/dns-query", "quic://…"
    client: EncryptedClient | None = None  # None: Do53

    @property
    def padding(self) -> int:
        return 0 if self.client is None else QUERY_PADDING_BLOCK


def make_upstream(config: UpstreamConfig, base_dir: Path = Path("."), loc: tuple[str | int, ...] = ()) -> Upstream:
    """The upstream ``config`` describes; ``loc`` is its config key path. Raises :class:`UpstreamSetupError`."""
    host, port = config.hostport()
    peer = Peer(host, port)
    if config.transport == "udp":
        return Upstream(peer, peer.label)
    tls = encrypted.TlsClientSettings(
        server_name=config.server_name,
        ca=base_dir / config.ca if config.ca else None,
        spki_pin=config.spki_pin,
        cert=base_dir / config.cert if config.cert else None,
        key=base_dir / config.key if config.key else None,
    )
    try:
        if config.transport == "dot":
            return Upstream(peer, f"tls://{peer.label}", encrypted.DotUpstream(host, port, tls))
        if config.transport == "doq":
            return Upstream(peer, f"quic://{peer.label}", encrypted.DoqUpstream(host, port, tls))
        url = f"https://{peer.label}{config.path}"
        return Upstream(peer, url, encrypted.DohUpstream(url, tls))
    except (OSError, ssl.SSLError, ValueError) as exc:
        # ssl names no file when a certificate or key does not parse: say which ones were being read.
        files = ", ".join(str(path) for path in (tls.ca, tls.cert, tls.key) if path is not None)
        detail = encrypted.describe(exc) if isinstance(exc, OSError) else str(exc)
        # Point at the key of a file that does not exist, if one does not.
        missing = [
            name for name, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)) if path and not path.exists()
        ]
        raise UpstreamSetupError(
            detail + (f" (reading {files})" if files else ""), (*loc, missing[0]) if missing else loc
        ) from None


_SCHEMES = {"tls": "dot", "https": "doh", "quic": "doq"}


def _transport(upstream: Upstream, prefix: str) -> str:
    if upstream.client is None:
        return "tcp" if prefix else "udp"
    return _SCHEMES.get(upstream.label.partition("://")[0], "tcp")


class Forwarder:
    """A :class:`~ztdns.resolver.Resolver` that forwards to the configured upstreams (Do53, DoT, DoH, DoQ).

    ``base_dir`` is where the TLS file paths of encrypted upstreams are relative to (the config file's folder).
    """

    def __init__(self, config: ResolverConfig, base_dir: Path = Path(".")) -> None:
        self._config = config
        self._upstreams = [
            make_upstream(upstream, base_dir, ("resolver", "upstreams", index))
            for index, upstream in enumerate(config.upstreams)
        ]
        self._book = HealthBook(
            [upstream.label for upstream in self._upstreams],
            failures_before_down=config.failures_before_down,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
        )
        # Exchanges waiting for an answer: close() ends them with a network error.
        self._waiting: set[UdpExchange | TcpExchange] = set()
        self._closed = False
        # Upstream traffic for the sinks (dnstap RESOLVER_QUERY/RESPONSE), set by the handler: called on the event
        # loop with (transport, upstream address, port, query bytes, reply, time.time() the query was sent).
        self.on_exchange: Callable[[str, str, int, bytes, dns.message.Message, float], None] | None = None

    def health(self) -> list[UpstreamHealth]:
        return self._book.snapshot(time.monotonic())

    async def resolve(self, question: Question) -> Resolution:
        if self._closed:
            return Resolution(None, Reason(EDE.NETWORK_ERROR, "forwarder closed"))
        if not self._upstreams:
            return Resolution(None, Reason(EDE.NO_REACHABLE_AUTHORITY, "no upstreams configured"))
        config = self._config
        deadline = time.monotonic() + config.budget
        order = self._book.order(time.monotonic())
        failures: list[UpstreamError] = []
        notes: dict[str, None] = {}  # "address what-failed", in order, without repeats
        last_servfail: Resolution | None = None
        for attempt in range(config.attempts):
            index = order[attempt % len(order)]
            upstream = self._upstreams[index]
            started = time.monotonic()
            allowed = min(config.timeout, deadline - started)
            if allowed < MIN_ATTEMPT_SECONDS:  # timers fire a millisecond early or late: no sliver attempts
                break
            try:
                reply = await self._attempt(upstream, question, allowed)
            except UpstreamError as exc:
                self._book.failed(index, time.monotonic(), penalty=allowed)
                failures.append(exc)
                notes[f"{upstream.label} {exc}"] = None
                continue
            self._book.succeeded(index, time.monotonic() - started)
            resolution = Resolution(reply, upstream=upstream.label)
            if reply.rcode() != dns.rcode.SERVFAIL:
                return resolution
            last_servfail = resolution
        if last_servfail is not None:
            return last_servfail
        # 23 only when every attempt hit a network error; any timeout or refusal means "nobody would answer".
        all_network = bool(failures) and all(f.ede is EDE.NETWORK_ERROR for f in failures)
        ede = EDE.NETWORK_ERROR if all_network else EDE.NO_REACHABLE_AUTHORITY
        text = "upstreams " + "; ".join(notes) if notes else "no attempt fitted in the time budget"
        return Resolution(None, Reason(ede, text))

    async def _attempt(self, upstream: Upstream, question: Question, allowed: float) -> dns.message.Message:
        """One query to one upstream within ``allowed`` seconds: UDP, then TCP if truncated, or one exchange on
        the encrypted connection. Raises UpstreamError."""
        wire = build_query(question, self._config.edns_payload, upstream.padding).to_wire()
        expected = ReplyFilter(wire)
        prefix = ""
        sent = time.time()
        try:
            async with asyncio.timeout(allowed):
                if upstream.client is not None:
                    reply = expected.decode(await upstream.client.query(wire, allowed))
                    if reply is None:
                        raise UpstreamError("answer does not match the question", EDE.NETWORK_ERROR)
                else:
                    reply = await self._udp(upstream.peer, wire, expected)
                    if reply is None:
                        prefix = "tcp "
                        reply = await self._tcp(upstream.peer, wire, expected)
        except encrypted.UpstreamError as exc:  # TLS verification, pin, HTTP status, closed connection
            raise UpstreamError(str(exc), EDE.NETWORK_ERROR) from None
        except (OSError, EOFError) as exc:  # TimeoutError and IncompleteReadError included
            raise _network_error(exc, prefix) from None
        if self.on_exchange is not None:
            self.on_exchange(_transport(upstream, prefix), upstream.peer.host, upstream.peer.port, wire, reply, sent)
        rcode = reply.rcode()
        if rcode in _REFUSALS:
            raise UpstreamError(dns.rcode.to_text(rcode).lower(), EDE.NO_REACHABLE_AUTHORITY)
        return reply

    async def _udp(self, peer: Peer, wire: bytes, expected: ReplyFilter) -> dns.message.Message | None:
        exchange = UdpExchange(expected, peer)
        # A new socket per query: the kernel binds it to a random ephemeral port, and connecting it means only
        # the upstream's datagrams (and its ICMP errors) reach us.
        with upstream_socket(peer.family, socket.SOCK_DGRAM) as sock, reading(sock, lambda: exchange.read_from(sock)):
            self._waiting.add(exchange)
            try:
                sock.connect((peer.host, peer.port))  # UDP: no packet, no wait
                sock.send(wire)
                return await exchange.reply
            finally:
                self._waiting.discard(exchange)
                _settle(exchange.reply)

    async def _tcp(self, peer: Peer, wire: bytes, expected: ReplyFilter) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        exchange = TcpExchange(expected)
        with upstream_socket(peer.family, socket.SOCK_STREAM) as sock:
            self._waiting.add(exchange)
            try:
                await loop.sock_connect(sock, (peer.host, peer.port))
                await loop.sock_sendall(sock, _LENGTH.pack(len(wire)) + wire)
                with reading(sock, lambda: exchange.read_from(sock)):
                    return await exchange.reply
            finally:
                self._waiting.discard(exchange)
                _settle(exchange.reply)

    def collect(self) -> Iterator[Metric]:
        """Per-upstream health: in service, smoothed RTT, attempts and failed attempts."""
        up = GaugeMetricFamily("ztdns_upstream_up", "1 when the upstream is in service", labels=["upstream"])
        srtt = GaugeMetricFamily("ztdns_upstream_srtt_seconds", "Smoothed round-trip time", labels=["upstream"])
        queries = CounterMetricFamily("ztdns_upstream_queries", "Attempts sent to the upstream", labels=["upstream"])
        errors = CounterMetricFamily("ztdns_upstream_errors", "Attempts that failed", labels=["upstream"])
        for upstream in self.health():
            up.add_metric([upstream.address], 1.0 if upstream.up else 0.0)
            if upstream.srtt is not None:
                srtt.add_metric([upstream.address], upstream.srtt)
            queries.add_metric([upstream.address], upstream.queries)
            errors.add_metric([upstream.address], upstream.errors)
        yield from (up, srtt, queries, errors)

    async def close(self) -> None:
        """Close every socket still open; queries in flight end with a network error, later ones fail at once."""
        self._closed = True
        for exchange in list(self._waiting):
            exchange.connection_lost(None)
        for upstream in self._upstreams:
            if upstream.client is not None:
                await upstream.client.close()
