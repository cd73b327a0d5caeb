"""Per-key state of the detectors, bounded: each table holds at most ``limit`` keys, dropping the least recently
evaluated first (keys touched since the last tick move to the end of the table at that tick).

A key maps to a slot number; the state of every key lives in flat columns indexed by slot (a list of floats or
ints per field, the sketches in one bytearray), so a key costs no Python object besides itself and its numbers:
the collector tracks a dozen lists, whatever the number of keys, and only a full collection walks them (their
items are not containers: ~2 ms for 40,000 keys), where ~10 tracked objects per key made every collection long
(docs/detect.md, "State and the garbage collector"). Lists rather than ``array``: the interpreter indexes lists
faster, and the detectors index them on every query. A dropped key's slot is reused by the next new key.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from ztdns.detect.sketch import HASH_BITS, INDEX_BITS, REGISTER_MASK, SLOT_BYTES, WindowedDistinct

Key = TypeVar("Key")


class SlotTable(ABC, Generic[Key]):
    """Keys → slots, bounded and ordered; subclasses keep the state in arrays indexed by slot."""

    __slots__ = ("dirty", "limit", "slots")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.slots: dict[Key, int] = {}
        self.dirty: dict[Key, int] = {}  # touched since the last tick: the only keys a tick evaluates

    def get(self, key: Key, now: float) -> int:
        """The slot of ``key``, new (its state reset to ``now``) if the key was not tracked."""
        slots = self.slots
        slot = slots.get(key)
        if slot is None:
            if len(slots) >= self.limit:
                oldest = next(iter(slots))  # the least recently evaluated key
                slot = slots.pop(oldest)
                # Its slot is the new key's now: a tick must not evaluate the old key with the new key's state.
                self.dirty.pop(oldest, None)
                self.start(slot, now)
            else:
                slot = len(slots)  # slots are 0 to len - 1: a slot is only ever freed for reuse at once
                self.grow(now)
            slots[key] = slot
        self.dirty[key] = slot
        return slot

    @abstractmethod
    def grow(self, now: float) -> None:
        """Add the next slot, for a new key first seen at ``now``."""

    @abstractmethod
    def start(self, slot: int, now: float) -> None:
        """Reset a slot for a new key first seen at ``now``."""

    def take_dirty(self) -> dict[Key, int]:
        """The keys touched since the last tick, with their slots, moved to the end of the table (the last to be
        dropped)."""
        dirty, self.dirty = self.dirty, {}
        slots = self.slots
        for key, slot in dirty.items():
            del slots[key]
            slots[key] = slot
        return dirty

    def __len__(self) -> int:
        return len(self.slots)


class TunnelTable(SlotTable[tuple[str, bytes]]):
    """Names below one registered domain asked by one identity: bytes carried, distinct names, record types."""

    __slots__ = ("born", "fast", "names", "queries", "samples", "slow", "stamp", "tunnel_types")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.born: list[float] = []
        self.stamp: list[float] = []
        self.slow: list[float] = []  # decayed sum of label bytes, time constant: the slow window
        self.fast: list[float] = []  # the same over the fast window
        self.queries: list[int] = []  # all queries since born
        self.tunnel_types: list[int] = []  # of which TXT, NULL, CNAME, MX, SRV, ANY, KEY, PRIVATE types
        self.names = WindowedDistinct()
        self.samples: list[bytes] = []  # the last labels seen, for the character statistics in the event

    def grow(self, now: float) -> None:
        self.born.append(now)
        self.stamp.append(now)
        self.slow.append(0.0)
        self.fast.append(0.0)
        self.queries.append(0)
        self.tunnel_types.append(0)
        self.names.grow()
        self.samples.append(b"")

    def start(self, slot: int, now: float) -> None:
        self.born[slot] = self.stamp[slot] = now
        self.slow[slot] = self.fast[slot] = 0.0
        self.queries[slot] = self.tunnel_types[slot] = 0
        self.names.reset(slot)
        self.samples[slot] = b""

    def add(
        self, slot: int, below: bytes, tunnel_type: bool, now: float, slow_window: float, fast_window: float
    ) -> None:
        """One query for the labels ``below`` the domain."""
        size = len(below)
        elapsed = now - self.stamp[slot]
        if elapsed > 0:
            self.stamp[slot] = now
            self.slow[slot] = self.slow[slot] * math.exp(-elapsed / slow_window) + size
            self.fast[slot] = self.fast[slot] * math.exp(-elapsed / fast_window) + size
        else:
            self.slow[slot] += size
            self.fast[slot] += size
        self.queries[slot] += 1
        if tunnel_type:
            self.tunnel_types[slot] += 1
        # An item into the sketch (WindowedDistinct says how), inlined: a call costs 10 % of the whole update.
        sketch = self.names
        epoch = int(now * 2 / slow_window)
        if epoch != sketch.epochs[slot]:
            sketch.advance(slot, epoch)
        value = hash(below) & 0xFFFFFFFFFFFFFFFF
        index = slot * SLOT_BYTES + (value & REGISTER_MASK)
        rank = HASH_BITS - (value >> INDEX_BITS).bit_length() + 1
        registers = sketch.registers
        registers[index] = max(registers[index], rank)
        sketch.counts[2 * slot] += 1
        self.samples[slot] = below


class DgaTable(SlotTable[str]):
    """Failing names with a high DGA score from one client, decayed over the window."""

    __slots__ = ("born", "examples", "score", "stamp")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.born: list[float] = []
        self.stamp: list[float] = []
        self.score: list[float] = []
        self.examples: list[tuple[str, ...]] = []  # the last few escaped names, for the event

    def grow(self, now: float) -> None:
        self.born.append(now)
        self.stamp.append(now)
        self.score.append(0.0)
        self.examples.append(())

    def start(self, slot: int, now: float) -> None:
        self.born[slot] = self.stamp[slot] = now
        self.score[slot] = 0.0
        self.examples[slot] = ()

    def add(self, slot: int, name: str, now: float, window: float) -> None:
        self.score[slot] = self.score[slot] * math.exp(-(now - self.stamp[slot]) / window) + 1.0
        self.stamp[slot] = now
        self.examples[slot] = (*self.examples[slot][-2:], name)


class ZoneTable(SlotTable[bytes]):
    """Each zone's (registered domain's) traffic: queries, answers that failed, cache hits, distinct children."""

    __slots__ = ("born", "children", "failures", "hits", "queries", "stamp")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.born: list[float] = []
        self.stamp: list[float] = []
        self.queries: list[float] = []  # decayed over the flood window, as the two below
        self.failures: list[float] = []
        self.hits: list[float] = []
        self.children = WindowedDistinct()

    def grow(self, now: float) -> None:
        self.born.append(now)
        self.stamp.append(now)
        self.queries.append(0.0)
        self.failures.append(0.0)
        self.hits.append(0.0)
        self.children.grow()

    def start(self, slot: int, now: float) -> None:
        self.born[slot] = self.stamp[slot] = now
        self.queries[slot] = self.failures[slot] = self.hits[slot] = 0.0
        self.children.reset(slot)

    def add(self, slot: int, below: bytes, failed: bool, hit: bool, now: float, window: float) -> None:
        """One query for a name whose labels below the zone are ``below``."""
        elapsed = now - self.stamp[slot]
        if elapsed > 0:
            self.stamp[slot] = now
            factor = math.exp(-elapsed / window)
        else:
            factor = 1.0  # the products below are then exact: the sums as they were
        self.queries[slot] = self.queries[slot] * factor + 1.0
        self.failures[slot] = self.failures[slot] * factor + (1.0 if failed else 0.0)
        self.hits[slot] = self.hits[slot] * factor + (1.0 if hit else 0.0)
        # An item into the sketch (WindowedDistinct says how), inlined: a call costs 10 % of the whole update.
        sketch = self.children
        epoch = int(now * 2 / window)
        if epoch != sketch.epochs[slot]:
            sketch.advance(slot, epoch)
        value = hash(below) & 0xFFFFFFFFFFFFFFFF
        index = slot * SLOT_BYTES + (value & REGISTER_MASK)
        rank = HASH_BITS - (value >> INDEX_BITS).bit_length() + 1
        registers = sketch.registers
        registers[index] = max(registers[index], rank)
        sketch.counts[2 * slot] += 1
