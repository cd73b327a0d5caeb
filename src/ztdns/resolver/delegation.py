"""Delegation tracking for recursion: the zone cuts found so far with their name servers, what QNAME
minimisation learnt about names without a cut, and which of a zone's servers to ask first.

Sans-IO (a delegation only holds the handles of its name servers' address lookups, which the resolver runs);
owned by one :class:`~ztdns.resolver.recursive.RecursiveResolver`. Names are kept by their wire keys
(:mod:`ztdns.dnssec.names`): they hash and compare in C, a Name in Python.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.name

from ztdns.dnssec.names import ancestry, wire_key

_NO_CUT_MEMO = 16_384
_DELEGATIONS_MAX = 100_000
_USABLE_MEMO = 4096


@dataclass
class Delegation:
    """A zone's name servers: their names and the addresses known for them (from trusted glue or lookups)."""

    zone: dns.name.Name
    names: list[dns.name.Name]
    addresses: list[str]
    expires: float
    # Name servers whose addresses are still unknown (no glue, or glue not trusted): resolved when needed.
    unresolved: list[dns.name.Name] = field(default_factory=list)
    lookups: int = 0  # of unresolved names so far (at most a few per delegation: NXNS mitigation)
    # Address lookups of those names under way (task -> name): whoever needs addresses next waits for these first;
    # each one adds what it finds to ``addresses`` when it ends, also after another one was first.
    pending: dict[asyncio.Task[list[str]], dns.name.Name] = field(default_factory=dict)


class Delegations:
    """Zone cuts by zone, and names QNAME minimisation found to be no cut (the zone's own servers answered)."""

    def __init__(self, hints: list[tuple[dns.name.Name, str]], clock: Callable[[], float] = time.time) -> None:
        self._hints = hints
        self._clock = clock
        self._cuts: dict[bytes, Delegation] = {}
        self._no_cut: dict[bytes, tuple[bytes, float]] = {}  # name's wire key -> (zone's wire key, until)

    def root(self) -> Delegation:
        names = list(dict.fromkeys(name for name, _ in self._hints))
        return Delegation(dns.name.root, names, [address for _, address in self._hints], float("inf"))

    def closest(self, name: dns.name.Name) -> Delegation:
        """The deepest known cut at or above ``name`` with addresses, else the root hints."""
        now = self._clock()
        for key in ancestry(name)[:-1]:  # the name, then each ancestor below the root
            delegation = self._cuts.get(key)
            if delegation is not None and delegation.expires > now and delegation.addresses:
                return delegation
        return self.root()

    def remember(self, delegation: Delegation) -> None:
        if len(self._cuts) >= _DELEGATIONS_MAX:  # zones that delegate every name must not grow it forever
            self._cuts.clear()
        self._cuts[wire_key(delegation.zone)] = delegation

    def is_known_no_cut(self, name: dns.name.Name, zone: dns.name.Name) -> bool:
        known = self._no_cut.get(wire_key(name))
        return known is not None and known[0] == wire_key(zone) and known[1] > self._clock()

    def remember_no_cut(self, name: dns.name.Name, zone: dns.name.Name, ttl: int) -> None:
        if len(self._no_cut) >= _NO_CUT_MEMO:
            self._no_cut.clear()
        self._no_cut[wire_key(name)] = (wire_key(zone), self._clock() + min(ttl, 86_400))


@dataclass
class _ServerStats:
    srtt: float = 0.0  # seconds; 0 = never measured (tried first, in random order)
    failures: int = 0
    held_until: float = 0.0


class ServerSelection:
    """Which addresses may be asked (families on or off, loopback only in labs) and in which order: servers never
    measured first in random order, then by smoothed RTT; servers failing repeatedly are held down for a while."""

    def __init__(self, ipv4: bool, ipv6: bool, allow_localhost: bool, clock: Callable[[], float] = time.time) -> None:
        self._ipv4 = ipv4
        self._ipv6 = ipv6
        self._allow_localhost = allow_localhost
        self._clock = clock
        self._servers: dict[str, _ServerStats] = {}
        self._usable_memo: dict[str, bool] = {}  # address -> may be asked (parsing addresses is not free)

    def usable(self, address: str) -> bool:
        usable = self._usable_memo.get(address)
        if usable is None:
            ip = ipaddress.ip_address(address)
            if not (self._ipv6 if ip.version == 6 else self._ipv4):
                usable = False
            elif ip.is_loopback or ip.is_unspecified:
                usable = self._allow_localhost
            else:
                usable = True
            if len(self._usable_memo) >= _USABLE_MEMO:
                self._usable_memo.clear()
            self._usable_memo[address] = usable
        return usable

    def order(self, addresses: list[str]) -> list[str]:
        usable = [a for a in dict.fromkeys(addresses) if self.usable(a)]
        if len(usable) < 2:  # nothing to order (many zones have one address known at first)
            return usable
        now = self._clock()
        random.shuffle(usable)
        stats = self._servers
        never = _ServerStats()

        def key(address: str) -> tuple[bool, float]:
            server = stats.get(address, never)
            return server.held_until > now, server.srtt

        usable.sort(key=key)
        return usable

    def answered(self, address: str, rtt: float) -> None:
        stats = self._servers.setdefault(address, _ServerStats())
        stats.srtt = rtt if stats.srtt == 0 else 0.7 * stats.srtt + 0.3 * rtt
        stats.failures = 0

    def failed(self, address: str, timeout: float) -> None:
        stats = self._servers.setdefault(address, _ServerStats())
        stats.failures += 1
        stats.srtt = max(stats.srtt * 2, timeout)
        if stats.failures >= 3:
            stats.held_until = self._clock() + min(60.0, 2.0**stats.failures)
