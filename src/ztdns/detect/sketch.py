"""Bounded-memory counting: tiny HyperLogLog sketches for distinct names, decayed rates, token buckets.

Everything here is constant-size per key, so the detectors' memory is ``max_keys`` times a few hundred bytes
whatever the traffic. Hashes are Python's own (SipHash with a per-process key): an outsider cannot aim names at
chosen registers.
"""

from __future__ import annotations

import math

_REGISTERS = 64  # 2**6 registers: about 13 % standard error, 64 bytes a key
_INDEX_BITS = 6
_ALPHA = 0.709  # HyperLogLog bias constant for 64 registers
_HASH_BITS = 58  # bits left for the rank after the index (hash() gives 64)
_INVERSE_POWERS = [2.0**-rank for rank in range(256)]  # 2**-register, by register value


class DistinctCounter:
    """HyperLogLog with 64 one-byte registers; ``estimate()`` is exact-ish (linear counting) for small counts."""

    __slots__ = ("registers",)

    def __init__(self) -> None:
        self.registers = bytearray(_REGISTERS)

    def add(self, item: bytes) -> None:
        value = hash(item) & 0xFFFFFFFFFFFFFFFF
        index = value & (_REGISTERS - 1)
        rest = value >> _INDEX_BITS
        rank = _HASH_BITS - rest.bit_length() + 1
        registers = self.registers
        registers[index] = max(registers[index], rank)

    def estimate(self) -> float:
        registers = self.registers
        zeros = registers.count(0)
        if zeros == _REGISTERS:
            return 0.0
        raw = _ALPHA * _REGISTERS * _REGISTERS / sum(map(_INVERSE_POWERS.__getitem__, registers))
        if raw <= 2.5 * _REGISTERS and zeros:
            return _REGISTERS * math.log(_REGISTERS / zeros)
        return raw

    def clear(self) -> None:
        self.registers = bytearray(_REGISTERS)


class WindowedDistinct:
    """Distinct items and all items over the last one or two epochs (an epoch is half a window, numbered by the
    caller): two sketches, the older dropped as epochs pass, so figures cover between half and one window."""

    __slots__ = ("counts", "current", "epoch", "previous")

    def __init__(self) -> None:
        self.current = DistinctCounter()
        self.previous = DistinctCounter()
        self.counts = [0, 0]  # items added in the current and the previous epoch
        self.epoch = 0

    def _advance(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        if epoch == self.epoch + 1:
            self.previous, self.current = self.current, self.previous
            self.counts = [0, self.counts[0]]
        else:
            self.previous.clear()
            self.counts = [0, 0]
        self.current.clear()
        self.epoch = epoch

    def add(self, item: bytes, epoch: int) -> None:
        if epoch != self.epoch:
            self._advance(epoch)
        # DistinctCounter.add, inlined: this runs twice for every query analysed.
        value = hash(item) & 0xFFFFFFFFFFFFFFFF
        registers = self.current.registers
        index = value & (_REGISTERS - 1)
        rank = _HASH_BITS - (value >> _INDEX_BITS).bit_length() + 1
        registers[index] = max(registers[index], rank)
        self.counts[0] += 1

    def figures(self, epoch: int) -> tuple[float, int]:
        """(distinct items, items) over the current and previous epochs."""
        self._advance(epoch)
        merged = DistinctCounter()
        merged.registers = bytearray(map(max, self.current.registers, self.previous.registers))
        total = self.counts[0] + self.counts[1]
        return min(merged.estimate(), float(total)), total


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
