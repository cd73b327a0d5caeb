"""Which addresses are open, for which names, until when (sans-IO: a clock is passed in, nothing touches the kernel).

Every answer becomes a :class:`Grant` per address. An address can be opened by several names (CDNs); it stays
open until the last of them expires. Each name keeps at most ``max_addresses_per_name`` addresses, least recently
answered evicted first, so a name with a huge rotating pool cannot fill the set — but never an address of the
answer being released (the application is about to connect to it) nor one that still has conntrack entries (a
connection, or an application that cached the answer, uses it: Cilium's "zombies"; ``in_use`` says which). All
names together hold at most ``max_addresses``; beyond it the grants closest to their expiry are shed. The result
of each answer is a :class:`SetUpdate`: the exact kernel timeouts to write and the addresses to close.

A port-scoped answer (an allow rule with ``ports``) is granted per (address, protocol, port): its key is the
address, a space and ``tcp/443``; caps count such keys, and the audit history and live-flow checks use the address.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ztdns.config.agent import AllowConfig


def bare_address(key: str) -> str:
    """The address of a grant's key: ``"192.0.2.1"``, or ``"192.0.2.1 tcp/443"`` for a port-scoped grant."""
    return key.partition(" ")[0]


def scoped_key(address: str, protocol: str, port: int) -> str:
    return f"{address} {protocol}/{port}"


class Grant(NamedTuple):
    """One name's permission for one address (a tuple: built per answered address, and cheap to build); a
    port-scoped grant has one per (address, protocol, port), its ``address`` "192.0.2.1 tcp/443"."""

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
    shed: int = 0  # grants dropped by the total bound (``max_addresses``)

    def __bool__(self) -> bool:
        return bool(self.timeouts or self.removals)


# Every table keyed by name or address is split into this many dicts. A dict grows by rebuilding itself whole:
# at 175k entries that is a 10 ms pause, and the tables grow in step (one name, one address), straight into the
# answer latency at 10k new names/s. Split, each rebuild is a 256th of that, and they happen at different times.
_SHARDS = 256
_MASK = _SHARDS - 1
_HISTORY_PER_SHARD = 256  # addresses remembered after expiry, per shard (65,536 in all)
# A repeated answer whose lifetime ends at most this much later than the grant's is not written again: DNS
# TTLs count in whole seconds, so a cached answer's lifetime wobbles by up to one second around the first one's.
_SAME_EXPIRY = 1.0


def _never(address: str) -> bool:
    return False


class AllowState:
    def __init__(self, config: AllowConfig, identity: str = "", in_use: Callable[[str], bool] = _never) -> None:
        """``identity``: the one most answers are for (the host's); only other ones are stored per name.
        ``in_use``: whether an address has live flows (asked only when a name is over its cap)."""
        self.config = config
        self.identity = identity
        self.in_use = in_use
        self._open = 0  # addresses held open (the length of all ``_addresses`` shards)
        # Plain dicts of str → float throughout: the cyclic collector does not track them. They are made per
        # answered name and address and live for minutes; tracked, every young collection walked them (pauses
        # of several milliseconds at 10k names/s, straight into the answer latency).
        # name → address → expiry, least recently answered first.
        self._names: list[dict[str, dict[str, float]]] = [{} for _ in range(_SHARDS)]
        # address → name → expiry (who holds it open).
        self._addresses: list[dict[str, dict[str, float]]] = [{} for _ in range(_SHARDS)]
        # name → the identity its latest answer was for, when not ``identity`` (restored grants of another one).
        self._identities: dict[str, str] = {}
        self._expiries: list[tuple[float, str, str]] = []
        # address → the name that last opened it, kept after expiry so audit records can name it (bounded).
        self._history: list[OrderedDict[str, str]] = [OrderedDict() for _ in range(_SHARDS)]

    def answer(self, name: str, records: list[tuple[str, int]], now: float, identity: str, update: SetUpdate) -> None:
        """Open (or refresh) ``records`` — (address, TTL) pairs answered for ``name`` — as of ``now``."""
        cfg = self.config
        floor, ceiling, grace = cfg.ttl_floor, cfg.ttl_ceiling, cfg.grace  # clamp(TTL, floor, ceiling) + grace
        self._identify(name, identity)
        for address, ttl in records:
            self._grant(address, name, now + (min(max(ttl, floor), ceiling) + grace), identity, now, update)
        # The answer's addresses are the name's most recent ones now: the cap spares that many.
        if len(self._names[hash(name) & _MASK].get(name, ())) > cfg.max_addresses_per_name:
            self._cap(name, now, update, len(records))
        if self._open > cfg.max_addresses:
            self._shed(now, update)

    def restore(self, grants: Iterable[Grant], now: float) -> None:
        """Re-open persisted grants with their remaining lifetimes (expired ones skipped), in bulk: at start,
        before the table is built from :meth:`live_timeouts` — no per-grant kernel work, one heapify.

        No per-name cap: these were granted (and capped) before; the name's next answer applies it."""
        names_shards, address_shards, history_shards = self._names, self._addresses, self._history
        expiries, identities, default = self._expiries, self._identities, self.identity
        for address, name, expires, identity in grants:
            if expires <= now:
                continue
            names = names_shards[hash(name) & _MASK]
            per_name = names.get(name)
            if per_name is None:
                per_name = names[name] = {}
            slot = hash(address) & _MASK
            holders = address_shards[slot].get(address)
            if holders is None:
                holders = address_shards[slot][address] = {}
                self._open += 1
            previous = holders.get(name)
            if previous is not None and previous >= expires:
                continue
            holders[name] = per_name[address] = expires
            if previous is None:
                expiries.append((expires, address, name))
            if identity != default:
                identities[name] = identity
            bare = address.partition(" ")[0]
            history = history_shards[hash(bare) & _MASK]
            history[bare] = name
            if len(history) > _HISTORY_PER_SHARD:
                history.popitem(last=False)
        heapq.heapify(expiries)
        if self._open > self.config.max_addresses:
            self._shed(now, SetUpdate())  # before the table is built: nothing to write

    def _identify(self, name: str, identity: str) -> None:
        if identity != self.identity:
            self._identities[name] = identity
        elif self._identities:
            self._identities.pop(name, None)

    def live_timeouts(self, now: float, addresses: Iterable[str] | None = None) -> dict[str, int]:
        """Every open address (or those of ``addresses`` that are open) with its remaining lifetime in seconds
        (to rebuild the kernel sets)."""
        timeouts = {}
        if addresses is None:
            pairs: Iterable[tuple[str, dict[str, float]]] = (
                item for shard in self._addresses for item in shard.items()
            )
        else:
            shards = self._addresses
            pairs = ((a, shards[hash(a) & _MASK].get(a) or {}) for a in addresses)
        for address, holders in pairs:
            remaining = math.ceil(max(holders.values(), default=0.0) - now)
            if remaining > 0:
                timeouts[address] = remaining
        return timeouts

    def _grant(self, address: str, name: str, expires: float, identity: str, now: float, update: SetUpdate) -> None:
        # Runs per answered address: get-then-create rather than setdefault(…, {}) (setdefault would build a
        # throw-away container every time), and a new address skips looking for other holders.
        names = self._names[hash(name) & _MASK]
        per_name = names.get(name)
        if per_name is None:
            per_name = names[name] = {}
        slot = hash(address) & _MASK
        addresses = self._addresses[slot]
        holders = addresses.get(address)
        previous = None
        if holders is None:
            addresses[address] = holders = {}
            self._open += 1
            open_until = 0.0
        else:
            open_until = max(holders.values()) if holders else 0.0
            # A cached answer carries a smaller TTL than the first one: never shorten what was granted.
            previous = holders.get(name)
            if previous is not None and previous > expires:
                expires = previous
        per_name.pop(address, None)  # re-inserted last: the most recently answered
        per_name[address] = expires
        bare = address.partition(" ")[0]  # the same string for an address-only grant: its hash is cached
        history = self._history[hash(bare) & _MASK]
        history[bare] = name
        history.move_to_end(bare)
        if len(history) > _HISTORY_PER_SHARD:
            history.popitem(last=False)
        if previous is not None and expires <= previous + _SAME_EXPIRY and open_until > now:
            # The same answer again (a cached one, its TTL counted down): the grant, and the kernel's entry,
            # already last that long. Writing them again would change nothing but cost a transaction.
            update.refreshed += 1
            return
        if open_until > now:
            update.refreshed += 1
        else:
            update.added += 1
        holders[name] = expires
        if previous is None:
            # One heap entry per grant; refreshes are found when it comes due (keeps the heap bounded).
            heapq.heappush(self._expiries, (expires, address, name))
        update.timeouts[address] = max(1, math.ceil((open_until if open_until > expires else expires) - now))
        if update.removals:
            update.removals.discard(address)
        update.grants.append(Grant(address, name, expires, identity))

    def _cap(self, name: str, now: float, update: SetUpdate, spared: int) -> None:
        """Drop ``name``'s least recently answered addresses beyond its cap, except its ``spared`` most recent
        ones (the answer being released) and those with live flows (they stay until they expire)."""
        per_name = self._names[hash(name) & _MASK][name]
        excess = len(per_name) - max(self.config.max_addresses_per_name, spared)
        candidates = len(per_name) - spared
        victims: list[str] = []
        in_use = self.in_use
        for index, address in enumerate(per_name):
            if index >= candidates or len(victims) >= excess:
                break
            if not in_use(address.partition(" ")[0]):
                victims.append(address)
        for address in victims:
            del per_name[address]
            self._release(address, name, now, update)

    def _shed(self, now: float, update: SetUpdate) -> None:
        """Over ``max_addresses`` in all: drop the grants closest to their expiry until back under it."""
        expiries = self._expiries
        while self._open > self.config.max_addresses and expiries:
            expires, address, name = heapq.heappop(expiries)
            holders = self._addresses[hash(address) & _MASK].get(address)
            actual = holders.get(name) if holders is not None else None
            if actual is None:
                continue  # evicted already
            if actual > expires:
                heapq.heappush(expiries, (actual, address, name))  # refreshed since: due later
                continue
            self._unlist(name, address)
            self._release(address, name, now, update)
            update.shed += 1

    def _unlist(self, name: str, address: str) -> None:
        """Take ``address`` off ``name``'s list (and forget the name with its last address)."""
        names = self._names[hash(name) & _MASK]
        per_name = names.get(name)
        if per_name is not None:
            per_name.pop(address, None)
            if not per_name:
                del names[name]
                self._identities.pop(name, None)

    def _release(self, address: str, name: str, now: float, update: SetUpdate) -> None:
        addresses = self._addresses[hash(address) & _MASK]
        holders = addresses.get(address, {})
        holders.pop(name, None)
        if holders:
            # Still open for other names: only as long as they hold it.
            update.timeouts[address] = max(1, math.ceil(max(holders.values()) - now))
            return
        if addresses.pop(address, None) is not None:
            self._open -= 1
        update.timeouts.pop(address, None)
        update.removals.add(address)

    def expire(self, now: float, limit: int | None = None) -> list[Grant]:
        """Forget grants past their expiry (the kernel drops the set element on its own); at most ``limit`` of
        them, the earliest first, when given."""
        gone: list[Grant] = []
        while self._expiries and self._expiries[0][0] <= now and (limit is None or len(gone) < limit):
            _, address, name = heapq.heappop(self._expiries)
            addresses = self._addresses[hash(address) & _MASK]
            holders = addresses.get(address)
            expires = holders.get(name) if holders is not None else None
            if holders is None or expires is None:
                continue  # evicted
            if expires > now:
                heapq.heappush(self._expiries, (expires, address, name))  # refreshed since
                continue
            gone.append(Grant(address, name, expires, self._identities.get(name, self.identity)))
            del holders[name]
            if not holders:
                del addresses[address]
                self._open -= 1
            self._unlist(name, address)
        return gone

    def holds(self, address: str) -> bool:
        """Whether some name still holds ``address`` open."""
        return address in self._addresses[hash(address) & _MASK]

    def last_name(self, address: str) -> str | None:
        """The name that last opened ``address``, even if that grant has expired since."""
        return self._history[hash(address) & _MASK].get(address)

    def addresses(self) -> list[str]:
        """The open addresses, as of now (to walk the grants a chunk at a time)."""
        return [address for shard in self._addresses for address in shard]

    def grants(self, addresses: Iterable[str] | None = None) -> list[Grant]:
        """Every grant, or those of ``addresses`` that are still open."""
        identities, default, shards = self._identities, self.identity, self._addresses
        grants = []
        for address in self.addresses() if addresses is None else addresses:
            holders = shards[hash(address) & _MASK].get(address)
            if holders:
                grants += [
                    Grant(address, name, expires, identities.get(name, default)) for name, expires in holders.items()
                ]
        return grants

    def __len__(self) -> int:
        return self._open

    def name_count(self) -> int:
        return sum(map(len, self._names))
