"""Per-key state of the detectors, bounded: each table holds at most ``limit`` keys, dropping the least recently
evaluated first (keys touched since the last tick move to the end of the table at that tick)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

from ztdns.detect.sketch import WindowedDistinct

State = TypeVar("State")
Key = TypeVar("Key")


class BoundedTable(Generic[Key, State]):
    def __init__(self, limit: int, make: Callable[[float], State]) -> None:
        self.limit = limit
        self.make = make
        self.items: dict[Key, State] = {}
        self.dirty: dict[Key, State] = {}  # touched since the last tick: the only keys a tick evaluates

    def get(self, key: Key, now: float) -> State:
        items = self.items
        state = items.get(key)
        if state is None:
            if len(items) >= self.limit:
                del items[next(iter(items))]  # the least recently evaluated key
            state = items[key] = self.make(now)
        self.dirty[key] = state
        return state

    def take_dirty(self) -> dict[Key, State]:
        """The keys touched since the last tick, moved to the end of the table (the last to be dropped)."""
        dirty, self.dirty = self.dirty, {}
        items = self.items
        for key, state in dirty.items():
            if items.pop(key, None) is state:
                items[key] = state
        return dirty

    def __len__(self) -> int:
        return len(self.items)


class TunnelState:
    """Names below one registered domain asked by one identity: bytes carried, distinct names, record types."""

    __slots__ = ("born", "fast", "names", "queries", "sample", "slow", "stamp", "tunnel_types")

    def __init__(self, now: float) -> None:
        self.born = now
        self.stamp = now
        self.slow = 0.0  # decayed sum of label bytes, time constant: the slow window
        self.fast = 0.0  # the same over the fast window
        self.queries = 0  # all queries since born
        self.tunnel_types = 0  # of which TXT, NULL, CNAME, MX, SRV, ANY, KEY, PRIVATE types
        self.names = WindowedDistinct()
        self.sample = b""  # the last labels seen, for the character statistics in the event

    def add(self, size: int, now: float, slow_window: float, fast_window: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.slow *= math.exp(-elapsed / slow_window)
            self.fast *= math.exp(-elapsed / fast_window)
            self.stamp = now
        self.slow += size
        self.fast += size


class DgaState:
    """Failing names with a high DGA score from one client, decayed over the window."""

    __slots__ = ("born", "examples", "score", "stamp")

    def __init__(self, now: float) -> None:
        self.born = now
        self.stamp = now
        self.score = 0.0
        self.examples: list[str] = []  # the last few escaped names, for the event

    def add(self, name: str, now: float, window: float) -> None:
        self.score = self.score * math.exp(-(now - self.stamp) / window) + 1.0
        self.stamp = now
        self.examples = [*self.examples[-2:], name]


class ZoneState:
    """One zone's (registered domain's) traffic: queries, answers that failed, cache hits, distinct children."""

    __slots__ = ("born", "children", "failures", "flagged_since", "hits", "queries", "stamp")

    def __init__(self, now: float) -> None:
        self.born = now
        self.stamp = now
        self.queries = 0.0  # decayed over the flood window, as the two below
        self.failures = 0.0
        self.hits = 0.0
        self.children = WindowedDistinct()
        self.flagged_since: float | None = None

    def add(self, failed: bool, hit: bool, now: float, window: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            factor = math.exp(-elapsed / window)
            self.queries *= factor
            self.failures *= factor
            self.hits *= factor
            self.stamp = now
        self.queries += 1.0
        if failed:
            self.failures += 1.0
        if hit:
            self.hits += 1.0
