"""The record path from the serving threads to the feed's thread: a ring of query records.

Per answer the serving thread copies what a record needs into the ring — the time, the latency, the bytes received
and sent — and names the client and the answer (objects shared by every query of one client, and by every replay
of one answer) by an index into one list per batch: no object is made or kept per answer, and the feed's thread
reads the records in order from two blocks of memory rather than chasing a tuple and its members, made up to a
batch's interval ago, through the heap. Security and upstream events go into the ring too, in order.

``Records`` is the ``_lines`` extension's ring (C); :class:`PyRecords` the pure-Python one
(``ZTDNS_NATIVE_LINES=python``, or no C compiler), which keeps the serving thread's tuples as they are. What the
feed takes is a :class:`Chunk` (from C) or a list of items (from Python); the sinks read either
(tests/observe/test_lines_extension.py holds the two to the same records and lines).
"""

from __future__ import annotations

import collections
import itertools
import struct
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, TypeVar

from ztdns.client import ClientInfo
from ztdns.observe.events import Answered, Item, RawQuery, SecurityEvent, UpstreamEvent

if TYPE_CHECKING:
    from typing_extensions import Buffer  # bytes, or the C ring's Block (memory handed over at a take)

Peer = TypeVar("Peer")  # a reply's destination, as its transport names it (not recorded)
# One record, as _lines.c's Record: when, latency, client index, answer index (ANOTHER_EVENT: the client index is
# another event's), offset of the query's bytes in the chunk's wires, their length, the response's (-1: none).
RECORD = struct.Struct("=ddIIIii4x")
ANOTHER_EVENT = 0xFFFFFFFF


class Chunk:
    """What the C ring held at a take: ``count`` records, the bytes received and sent (``wires``), and the clients,
    answers and other events they name (``objects``). The records and wires are the ring's own memory, handed over
    (``_lines.Block``: read only, the buffer protocol), which goes back to the ring's pool when the last sink is
    done with the chunk. Read only; ``head`` shares the blocks."""

    __slots__ = ("count", "objects", "records", "wires")

    def __init__(self, count: int, records: Buffer, wires: Buffer, objects: list[object]) -> None:
        self.count = count
        self.records = records
        self.wires = wires
        self.objects = objects

    def __len__(self) -> int:
        return self.count

    def source(self, parts: list[object]) -> tuple[int, Buffer, Buffer, list[object], list[object]]:
        """The chunk as the ``_lines`` formatters take it (they read its first ``count`` records), with ``parts``: a
        list of None as long as ``objects`` (:meth:`new_parts`), which they fill with each object's parts as they
        make them, for the next call over this chunk."""
        return self.count, self.records, self.wires, self.objects, parts

    def new_parts(self) -> list[object]:
        return [None] * len(self.objects)

    def head(self, count: int) -> Chunk:
        """The first ``count`` records."""
        return Chunk(min(count, self.count), self.records, self.wires, self.objects)

    def items(self, start: int = 0, stop: int | None = None) -> list[Item]:
        """Records ``start`` to ``stop`` as the serving thread's tuples and events (what the Python paths read)."""
        stop = self.count if stop is None else min(stop, self.count)
        objects, wires = self.objects, memoryview(self.wires)
        made: list[Item] = []
        for index in range(max(start, 0), stop):
            when, latency, client, answer, offset, query_length, response_length = RECORD.unpack_from(
                self.records, index * RECORD.size
            )
            if answer == ANOTHER_EVENT:
                made.append(objects[client])
                continue
            end = offset + query_length
            response = None if response_length < 0 else bytes(wires[end : end + response_length])
            made.append((when, objects[client], objects[answer], latency, bytes(wires[offset:end]), response))
        return made


Batch = list[Item] | Chunk


def items(batch: Batch, start: int = 0, stop: int | None = None) -> list[Item]:
    """Part of a batch as tuples and events, whichever ring made it."""
    if isinstance(batch, Chunk):
        return batch.items(start, stop)
    return batch[start:stop]


class Ring(Protocol):
    """What the observer adds to and the feed takes from (``Records`` in C, :class:`PyRecords`)."""

    dropped: int

    def __len__(self) -> int: ...
    def add(
        self, when: float, latency: float, client: ClientInfo, answer: Answered, query: bytes, response: bytes | None
    ) -> bool: ...
    def add_replies(
        self, when: float, latency: float, client: ClientInfo, replies: list[tuple[Answered, bytes, bytes, Peer]]
    ) -> int: ...
    def add_event(self, event: SecurityEvent | UpstreamEvent) -> bool: ...
    def take(self) -> list[Item] | tuple[int, Buffer, Buffer, list[object]] | None: ...


class PyRecords:
    """The ring in Python: the serving thread's tuples, kept in a list until taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: collections.deque[RawQuery | SecurityEvent | UpstreamEvent] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self, when: float, latency: float, client: ClientInfo, answer: Answered, query: bytes, response: bytes | None
    ) -> bool:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return False
        self._items.append((when, client, answer, latency, query, response))
        return True

    def add_replies(
        self, when: float, latency: float, client: ClientInfo, replies: list[tuple[Answered, bytes, bytes, Peer]]
    ) -> int:
        room = max(self.capacity - len(self._items), 0)
        added = replies[:room]
        self._items.extend([(when, client, answer, latency, query, response) for answer, query, response, _ in added])
        self.dropped += max(len(replies) - room, 0)
        return min(room, len(replies))

    def add_event(self, event: SecurityEvent | UpstreamEvent) -> bool:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return False
        self._items.append(event)
        return True

    def take(self) -> list[Item] | None:
        items = self._items
        # Adds from other threads meanwhile are taken next time; map calls popleft from C, no bytecode per item.
        taken: list[Item] = list(map(collections.deque.popleft, itertools.repeat(items, len(items))))
        return taken or None


def make_ring(capacity: int, extension: ModuleType | None) -> Ring:
    """The ``_lines`` extension's ring (``formats.native_extension()``: None when it is not built or not in use),
    else the Python one."""
    if extension is not None:
        ring: Ring = extension.Records(capacity)
        return ring
    return PyRecords(capacity)


def take(ring: Ring) -> Batch | None:
    """What was added to ``ring`` since the last take, as a chunk (C) or a list of items (Python); None: nothing."""
    taken = ring.take()
    if taken is None or isinstance(taken, list):
        return taken
    return Chunk(*taken)
