"""Transports: thin adapters that move bytes between sockets and the pipeline, and say who is asking.

Owns: listeners for UDP and TCP (RFC 7766) Do53, DoT, DoH and DoQ. A transport never parses DNS beyond
framing; it builds a :class:`~ztdns.client.ClientInfo` (source address, verified certificate identity) and calls a
:class:`Handler`. Client data touched: source address and certificate identity, passed on, never logged here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from ztdns.client import ClientInfo

# Whatever a transport tells its clients apart by (a UDP lane: the raw sockaddr bytes).
Peer = TypeVar("Peer", bound=Hashable)


class Handler(Protocol):
    """What transports call. Implemented by :class:`ztdns.handler.Frontend`."""

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Answer synchronously from pre-rendered responses, or None to go the full way with ``handle``.
        For a UDP client, ``b""`` means: decided here, send nothing (rate limiting drops a query)."""

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Run the pipeline. Returns the response wire, or None when the query must be dropped silently."""


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that answers a UDP lane's batch of datagrams at once (per-batch clock reads, identity look-ups,
    rate-limit charges and metric counts); the lane calls ``fast`` per datagram for handlers without it."""

    def fast_batch(
        self,
        batch: list[tuple[bytes, Peer]],
        client_of: Callable[[Peer], ClientInfo],
        answers: list[tuple[bytes, Peer]],
    ) -> list[tuple[bytes, Peer]]:
        """``fast`` for each ``(query, peer)`` of ``batch`` (``client_of`` says who a peer is): appends
        ``(answer, peer)`` to ``answers`` for what it answered and returns the ``(query, peer)`` pairs left for
        ``handle``."""


# What the UDP lane's C loop (``_udpbatch.serve``) answers plain replays from: the runtime's peers memo (sockaddr →
# (client, replayable, identity)), the replays' exact tables by identity, the query log's ring (None: no log) and
# the detection verdicts in force (None: none), whose DGA ones stop a client's replays.
PlainReplays = tuple[
    dict[Any, tuple[ClientInfo, bool, str | None]], dict[str | None, dict[bytes, Any]], object | None, object | None
]
# What it answered so: (client, identity, answers) per client, for the rate limits; (labels, answers) per label set.
Charged = list[tuple[ClientInfo, str | None, int]]
Counted = list[tuple[tuple[str, ...], int]]


@runtime_checkable
class ReplayHandler(Protocol):
    """A batch handler whose plain replays a batched UDP lane may answer itself, in C: per batch, ``plain_replays``
    says from what (None: this batch needs Python's decisions, ``fast_batch`` answers it), and ``replays_served``
    takes what the lane answered so — the rate limits' charges per client and the metric counts per label set."""

    def plain_replays(self) -> PlainReplays | None: ...

    def replays_served(self, charged: Charged, counted: Counted, latency: float) -> None: ...


@runtime_checkable
class MultiResponseHandler(Protocol):
    """A handler that may answer one request with several messages over a stream (a zone transfer): the TCP
    transport calls ``respond_all`` instead of ``handle`` for what ``fast`` did not answer."""

    async def respond_all(self, wire: bytes, client: ClientInfo) -> Iterable[bytes]:
        """Every response message for the request, in order; empty means send nothing. May be a generator making
        each message as the transport takes it (a streamed zone transfer)."""
