"""What one client may hold of a stream listener (TCP, DoT, DoH): connection slots, time, and buffered memory.

- :class:`ClientSlots`: at most ``max_connections_per_client`` connections per client — its address, or its
  certificate identity once a TLS handshake proved one (so the workloads behind one NAT address that each have a
  certificate are counted apart).
- :class:`Progress`: a query (or HTTP request) must arrive whole within ``query_timeout`` seconds of its first
  byte. Silence is what ``idle_timeout`` measures; a trickle of bytes (slowloris: 1 byte every 4 s) is not
  progress and does not keep a connection.
- :class:`WriteBudget`: answers a client does not read are bounded. Above the transport's high-water mark the
  connection stops reading (no new questions, so no new answers); if its answers stay unread for
  ``idle_timeout`` it is closed; and the bytes held for all such connections of a listener stay under
  ``max_buffered_bytes``, cutting the connection holding the most first.

Config: ``[[listen]]`` ``max_connections_per_client``, ``query_timeout``, ``idle_timeout``,
``max_buffered_bytes`` (docs/transports.md). Client data touched: the address or identity, as a dict key only.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class ClientSlots:
    """Connections held per client key; ``take`` refuses beyond ``limit``."""

    __slots__ = ("counts", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.refused = 0

    def take(self, key: str) -> bool:
        held = self.counts.get(key, 0)
        if held >= self.limit:
            self.refused += 1
            return False
        self.counts[key] = held + 1
        return True

    def give(self, key: str) -> None:
        held = self.counts.get(key, 0) - 1
        if held > 0:
            self.counts[key] = held
        else:
            self.counts.pop(key, None)


class Progress:
    """When the message being received started (None: between messages). Sans-IO: callers pass ``now``."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started: float | None = None

    def fed(self, now: float, completed: int, buffered: int) -> None:
        """After a read: ``completed`` whole messages came out, ``buffered`` bytes of the next one wait."""
        if not buffered:
            self.started = None
        elif completed or self.started is None:  # a new message has begun
            self.started = now

    def overdue(self, now: float, timeout: float) -> bool:
        return self.started is not None and now - self.started > timeout


class Blockable(Protocol):
    def buffered(self) -> int:
        """Bytes written and not yet taken by the client."""

    def abort(self) -> None: ...


class StreamProtocol(asyncio.Protocol):
    """What TCP and TLS stream connections share: their transport, and the ways a listener cuts them."""

    transport: asyncio.Transport | None

    def buffered(self) -> int:
        """Bytes written and not yet taken by the client."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class WriteBudget:
    """Connections whose client stopped reading, and the bound on what all of them hold together."""

    __slots__ = ("blocked", "cut", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.blocked: set[Blockable] = set()
        self.cut = 0

    def block(self, connection: Blockable) -> None:
        """CONNECTION went above its high-water mark: bound the total, cutting the biggest holders first."""
        self.blocked.add(connection)
        sizes = {c: c.buffered() for c in self.blocked}
        total = sum(sizes.values())
        if total <= self.limit:
            return
        for worst in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= self.limit:
                break
            total -= sizes[worst]
            self.blocked.discard(worst)
            self.cut += 1
            worst.abort()

    def unblock(self, connection: Blockable) -> None:
        self.blocked.discard(connection)
