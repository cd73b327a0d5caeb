"""Bounded-memory counting: tiny HyperLogLog sketches for distinct names, decayed rates, token buckets.

Everything here is constant-size per key, so the detectors' memory is ``max_keys`` times a few hundred bytes
whatever the traffic; the sketches live in flat bytearrays, which the garbage collector does not track. Hashes
are Python's own (SipHash with a per-process key): an outsider cannot aim names at chosen registers.
"""

from __future__ import annotations

import math

_REGISTERS = 64  # 2**6 registers: about 13 % standard error, 64 bytes a key
INDEX_BITS = 6
_ALPHA = 0.709  # HyperLogLog bias constant for 64 registers
HASH_BITS = 58  # bits left for the rank after the index (hash() gives 64)
_INVERSE_POWERS = [2.0**-rank for rank in range(256)]  # 2**-register, by register value
_EMPTY = bytes(_REGISTERS)
SLOT_BYTES = 2 * _REGISTERS  # a slot of WindowedDistinct: two sketches
_EMPTY_SLOT = bytes(SLOT_BYTES)
REGISTER_MASK = _REGISTERS - 1


def estimate(registers: bytes | bytearray) -> float:
    """Distinct items counted by 64 HyperLogLog registers; exact-ish (linear counting) for small counts."""
    zeros = registers.count(0)
    if zeros == _REGISTERS:
        return 0.0
    raw = _ALPHA * _REGISTERS * _REGISTERS / sum(map(_INVERSE_POWERS.__getitem__, registers))
    if raw <= 2.5 * _REGISTERS and zeros:
        return _REGISTERS * math.log(_REGISTERS / zeros)
    return raw


class WindowedDistinct:
    """For many keys, numbered by slot: distinct items and all items over the last one or two epochs (an epoch is
    half a window, numbered by the caller), from two HyperLogLog sketches, the older dropped as epochs pass, so
    figures cover between half and one window.

    Slot n's sketches are bytes n·128 to n·128+127 of one bytearray (the current epoch's 64 registers, then the
    previous epoch's), its counts and epoch entries of two lists: no object per key (docs/detect.md, "State and
    the garbage collector"). The tables add items themselves (``ZoneTable.add``, ``TunnelTable.add``: a call
    here would cost 10 % of recording a query): :meth:`advance` to the item's epoch, then the register of the
    item's hash at ``slot * SLOT_BYTES + (hash & REGISTER_MASK)`` keeps the highest rank, and the slot's
    current count (``counts[2 * slot]``) grows by one.
    """

    __slots__ = ("counts", "epochs", "registers")

    def __init__(self) -> None:
        self.registers = bytearray()
        self.counts: list[int] = []  # per slot: items added in the current and in the previous epoch
        self.epochs: list[int] = []

    def grow(self) -> None:
        """Room for one more slot (the next number), empty."""
        self.registers += _EMPTY_SLOT
        self.counts.extend((0, 0))
        self.epochs.append(0)

    def reset(self, slot: int) -> None:
        base = slot * SLOT_BYTES
        self.registers[base : base + SLOT_BYTES] = _EMPTY_SLOT
        self.counts[2 * slot] = self.counts[2 * slot + 1] = 0
        self.epochs[slot] = 0

    def advance(self, slot: int, epoch: int) -> None:
        """Make ``epoch`` the slot's current epoch (dropping what is older than the one before)."""
        if epoch == self.epochs[slot]:
            return
        registers, counts = self.registers, self.counts
        current = slot * SLOT_BYTES
        previous = current + _REGISTERS
        if epoch == self.epochs[slot] + 1:
            registers[previous : previous + _REGISTERS] = registers[current:previous]
            counts[2 * slot + 1] = counts[2 * slot]
        else:
            registers[previous : previous + _REGISTERS] = _EMPTY
            counts[2 * slot + 1] = 0
        registers[current:previous] = _EMPTY
        counts[2 * slot] = 0
        self.epochs[slot] = epoch

    def figures(self, slot: int, epoch: int) -> tuple[float, int]:
        """(distinct items, items) over the current and previous epochs."""
        self.advance(slot, epoch)
        registers = self.registers
        current = slot * SLOT_BYTES
        previous = current + _REGISTERS
        merged = bytes(map(max, registers[current:previous], registers[previous : previous + _REGISTERS]))
        total = self.counts[2 * slot] + self.counts[2 * slot + 1]
        return min(estimate(merged), float(total)), total


def rate(total: float, age: float, window: float) -> float:
    """Per-second rate from an exponentially decayed sum (time constant ``window``) of a key ``age`` seconds old.

    The sum of a constant rate r after t seconds is r·window·(1 - e^(-t/window)); dividing by that factor
    makes young keys measure the rate they really have instead of ramping up over several windows.
    """
    if age <= 0:
        return 0.0
    return total / (window * -math.expm1(-age / window))


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``depth``; a query takes one. Lost updates between threads
    only make the limit slightly softer."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, depth: float, now: float) -> None:
        self.tokens = depth
        self.stamp = now

    def take(self, rate_per_second: float, depth: float, now: float) -> bool:
        return self.take_many(rate_per_second, depth, now, 1) == 1

    def take_many(self, rate_per_second: float, depth: float, now: float, count: int) -> int:
        """``count`` queries arriving at ``now`` take a token each while there is one: how many got one. The same
        tokens as ``count`` calls of ``take`` at ``now`` (taking 1.0 at a time from a float below 2**53 is exact)."""
        tokens = min(depth, self.tokens + (now - self.stamp) * rate_per_second)
        self.stamp = now
        taken = min(count, int(tokens)) if tokens >= 1.0 else 0
        self.tokens = tokens - taken
        return taken
