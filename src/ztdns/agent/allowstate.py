"""Which addresses are open, for which names, until when (sans-IO: a clock is passed in, nothing touches the kernel).

Every answer becomes a :class:`Grant` per address. An address can be opened by several names (CDNs); it stays
open until the last of them expires. Each name keeps at most ``max_per_name`` addresses, least recently
answered evicted first, so a name with a huge rotating pool cannot fill the set. The result of each answer is a
:class:`SetUpdate`: the exact kernel timeouts to write and the addresses to close.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from ztdns.agent.config import AllowConfig


class Grant(NamedTuple):
    """One name's permission for one address (a tuple: built per answered address, and cheap to build)."""

    address: str
    name: str
    expires: float  # wall-clock seconds
    identity: str = ""


@dataclass(slots=True)
class SetUpdate:
    """Kernel work for the answers of one event-loop turn: address → timeout seconds, and addresses to close.

    Answers write into one shared update (the set writer's pending batch), so the timeout recorded for an address
    is always the latest one computed from all its holders — no merging afterwards.
    """

    timeouts: dict[str, int] = field(default_factory=dict)
    removals: set[str] = field(default_factory=set)
    grants: list[Grant] = field(default_factory=list)
    added: int = 0
    refreshed: int = 0

    def __bool__(self) -> bool:
        return bool(self.timeouts or self.removals)


class AllowState:
    def __init__(self, config: AllowConfig) -> None:
        self.config = config
        # name → address → expiry, least recently answered first.
        self._names: dict[str, OrderedDict[str, float]] = {}
        # address → name → grant (who opened it; the newest is last).
        self._addresses: dict[str, dict[str, Grant]] = {}
        self._expiries: list[tuple[float, str, str]] = []
        # address → the name that last opened it, kept after expiry so audit records can name it (bounded).
        self._history: OrderedDict[str, str] = OrderedDict()
        self.history_size = 65_536

    def lifetime(self, ttl: int) -> int:
        cfg = self.config
        return min(max(ttl, cfg.ttl_floor), cfg.ttl_ceiling) + cfg.grace

    def answer(self, name: str, records: list[tuple[str, int]], now: float, identity: str, update: SetUpdate) -> None:
        """Open (or refresh) ``records`` — (address, TTL) pairs answered for ``name`` — as of ``now``."""
        cfg = self.config
        floor, ceiling, grace = cfg.ttl_floor, cfg.ttl_ceiling, cfg.grace  # lifetime(), inlined: per address
        for address, ttl in records:
            self._grant(Grant(address, name, now + (min(max(ttl, floor), ceiling) + grace), identity), now, update)
        self._cap(name, now, update)

    def restore(self, grant: Grant, now: float, update: SetUpdate) -> None:
        """Re-open a persisted grant with its remaining lifetime (nothing if it has expired)."""
        if grant.expires > now:
            self._grant(grant, now, update)
            self._cap(grant.name, now, update)

    def live_timeouts(self, now: float) -> dict[str, int]:
        """Every open address with its remaining lifetime in seconds (to rebuild the kernel sets)."""
        timeouts = {}
        for address in self._addresses:
            remaining = math.ceil(self._open_until(address) - now)
            if remaining > 0:
                timeouts[address] = remaining
        return timeouts

    def _grant(self, grant: Grant, now: float, update: SetUpdate) -> None:
        # Runs per answered address: get-then-create rather than setdefault(…, OrderedDict()) (setdefault would
        # build a throw-away container every time), and a new address skips looking for other holders.
        address, name = grant.address, grant.name
        per_name = self._names.get(name)
        if per_name is None:
            per_name = self._names[name] = OrderedDict()
        holders = self._addresses.get(address)
        previous = None
        if holders is None:
            self._addresses[address] = holders = {}
            open_until = 0.0
        else:
            open_until = max([g.expires for g in holders.values()]) if holders else 0.0
            # A cached answer carries a smaller TTL than the first one: never shorten what was granted.
            previous = holders.pop(name, None)
            if previous is not None and previous.expires > grant.expires:
                grant = Grant(address, name, previous.expires, grant.identity)
        if open_until > now:
            update.refreshed += 1
        else:
            update.added += 1
        holders[name] = grant
        expires = grant.expires
        per_name[address] = expires
        per_name.move_to_end(address)
        history = self._history
        history[address] = name
        history.move_to_end(address)
        if len(history) > self.history_size:
            history.popitem(last=False)
        if previous is None:
            # One heap entry per grant; refreshes are found when it comes due (keeps the heap bounded).
            heapq.heappush(self._expiries, (expires, address, name))
        update.timeouts[address] = max(1, math.ceil((open_until if open_until > expires else expires) - now))
        if update.removals:
            update.removals.discard(address)
        update.grants.append(grant)

    def _cap(self, name: str, now: float, update: SetUpdate) -> None:
        per_name = self._names[name]
        while len(per_name) > self.config.max_addresses_per_name:
            address, _ = per_name.popitem(last=False)
            self._release(address, name, now, update)

    def _release(self, address: str, name: str, now: float, update: SetUpdate) -> None:
        holders = self._addresses.get(address, {})
        holders.pop(name, None)
        if holders:
            # Still open for other names: only as long as they hold it.
            update.timeouts[address] = max(1, math.ceil(self._open_until(address) - now))
            return
        self._addresses.pop(address, None)
        update.timeouts.pop(address, None)
        update.removals.add(address)

    def _open_until(self, address: str) -> float:
        holders = self._addresses.get(address)
        return max((g.expires for g in holders.values()), default=0.0) if holders else 0.0

    def expire(self, now: float) -> list[Grant]:
        """Forget grants past their expiry (the kernel drops the set element on its own)."""
        gone = []
        while self._expiries and self._expiries[0][0] <= now:
            _, address, name = heapq.heappop(self._expiries)
            grant = self._addresses.get(address, {}).get(name)
            if grant is None:
                continue  # evicted
            if grant.expires > now:
                heapq.heappush(self._expiries, (grant.expires, address, name))  # refreshed since
                continue
            gone.append(grant)
            del self._addresses[address][name]
            if not self._addresses[address]:
                del self._addresses[address]
            per_name = self._names.get(name)
            if per_name is not None:
                per_name.pop(address, None)
                if not per_name:
                    del self._names[name]
        return gone

    def last_name(self, address: str) -> str | None:
        """The name that last opened ``address``, even if that grant has expired since."""
        return self._history.get(address)

    def grants(self) -> list[Grant]:
        return [g for holders in self._addresses.values() for g in holders.values()]

    def __len__(self) -> int:
        return len(self._addresses)

    def name_count(self) -> int:
        return len(self._names)
