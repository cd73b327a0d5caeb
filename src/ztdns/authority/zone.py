"""An authoritative zone as an immutable snapshot of RRsets, with the indexes answering needs.

A :class:`Zone` never changes after it is built: an update makes a new snapshot (``with_changes``) and the
service swaps it in, so an answer being built never sees half an update, and a transfer streams one version.
The name indexes are :class:`Layered` mappings, so a version derived by an update shares them with its
predecessor and costs in proportion to the change, not to the zone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset
import dns.zone

IN = dns.rdataclass.IN
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS
CNAME = dns.rdatatype.CNAME
DS = dns.rdatatype.DS

# Types a zone file or an update may not carry: the signer owns them (they are made from keys and data).
SIGNER_TYPES = frozenset(
    {
        dns.rdatatype.RRSIG,
        dns.rdatatype.NSEC,
        dns.rdatatype.NSEC3,
        dns.rdatatype.NSEC3PARAM,
        dns.rdatatype.DNSKEY,
        dns.rdatatype.CDS,
        dns.rdatatype.CDNSKEY,
    }
)


class ZoneError(ValueError):
    """Zone data that cannot be served (no SOA, data outside the origin, CNAME beside other data...)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One edit: replace (rdataset given) or delete (rdataset None) the RRset ``rdtype`` at ``name``."""

    name: dns.name.Name
    rdtype: int
    rdataset: dns.rdataset.Rdataset | None


K = TypeVar("K")
V = TypeVar("V")
_GONE: Any = object()  # in a Layered's changes: the key was removed
_MISSING: Any = object()
# A Layered folds its changes into a new base once they outnumber this fraction of the base (or the minimum):
# a version then costs a copy of its changes (small) and, once in that many versions, one copy of the base.
LAYER_FRACTION = 64
LAYER_MIN = 256


class Layered(Mapping[K, V]):
    """An immutable mapping: a base dict shared between versions plus a small dict of changes over it.

    ``changed`` makes the next version without copying the base (unless the changes have grown large, then it
    folds them in), so an update of one name in a zone of 50,000 costs microseconds, not two copies of
    50,000-entry indexes. Neither dict is modified after the version holding it is made, so readers on other
    threads never see a half-made version."""

    __slots__ = ("_base", "_len", "_top")

    def __init__(self, base: dict[K, V], top: dict[K, Any] | None = None, length: int | None = None) -> None:
        self._base = base
        self._top: dict[K, Any] = top or {}
        self._len = len(base) if length is None else length

    def get(self, key: K, default: Any = None) -> Any:
        top = self._top
        if top:
            value = top.get(key, _MISSING)
            if value is not _MISSING:
                return default if value is _GONE else value
        return self._base.get(key, default)

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        found: V = value
        return found

    def __contains__(self, key: object) -> bool:
        top = self._top
        if top:
            value = top.get(key, _MISSING)  # type: ignore[arg-type]
            if value is not _MISSING:
                return value is not _GONE
        return key in self._base

    def __iter__(self) -> Iterator[K]:
        top = self._top
        if not top:
            return iter(self._base)
        return _chain_keys(self._base, top)

    def __len__(self) -> int:
        return self._len

    def changed(self, updates: dict[K, Any]) -> Layered[K, V]:
        """The next version: ``updates`` maps keys to new values, or to ``Layered.GONE`` to remove them."""
        length = self._len
        for key, value in updates.items():
            length += (value is not _GONE) - (key in self)
        top = {**self._top, **updates}
        if len(top) <= max(LAYER_MIN, len(self._base) // LAYER_FRACTION):
            return Layered(self._base, top, length)
        base = dict(self._base)
        for key, value in top.items():
            if value is _GONE:
                base.pop(key, None)
            else:
                base[key] = value
        return Layered(base)

    GONE: Any = _GONE


def _chain_keys(base: dict[K, V], top: dict[K, Any]) -> Iterator[K]:
    for key in base:
        if key not in top:
            yield key
    for key, value in top.items():
        if value is not _GONE:
            yield key


Node = dict[int, dns.rdataset.Rdataset]


class Zone:
    """One version of a zone. ``nodes`` maps owner names to their RRsets by type."""

    __slots__ = ("_max_ttl", "_negative_soa", "cuts", "existing", "nodes", "origin", "serial", "touched")

    def __init__(self, origin: dns.name.Name, nodes: Mapping[dns.name.Name, Node]) -> None:
        self.origin = origin
        self.nodes: Layered[dns.name.Name, Node] = Layered({n: d for n, d in nodes.items() if d})
        apex = self.nodes.get(origin, {})
        soa = apex.get(SOA)
        if soa is None or len(soa) != 1:
            raise ZoneError(f"zone {origin} needs exactly one SOA record at its apex")
        if NS not in apex:
            raise ZoneError(f"zone {origin} has no NS records at its apex")
        self.serial: int = soa[0].serial
        self._negative_soa: dns.rrset.RRset | None = None
        self._max_ttl: int | None = None
        # Names whose nodes differ from the version this one was derived from incrementally (None: built whole).
        self.touched: frozenset[dns.name.Name] | None = None
        # Every name that exists in the sense of RFC 4592 (names with data and the empty non-terminals above
        # them), with the number of existing names directly below it: an update removing a name removes the
        # empty non-terminals it leaves childless without a search.
        existing: dict[dns.name.Name, int] = {origin: 0}
        # Delegation points: NS RRsets anywhere below the apex.
        self.cuts: set[dns.name.Name] = set()
        for name, node in self.nodes.items():
            _check_node(origin, name, node)
            if NS in node and name != origin:
                self.cuts.add(name)
            _add_name(existing.get, existing.__setitem__, name)
        self.existing: Layered[dns.name.Name, int] = Layered(existing)

    # -- building --------------------------------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str, origin: dns.name.Name | str) -> Zone:
        origin = dns.name.from_text(origin) if isinstance(origin, str) else origin
        try:
            loaded = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
        except dns.exception.DNSException as exc:
            raise ZoneError(f"zone {origin}: {exc}") from None
        return cls._from_dnszone(loaded)

    @classmethod
    def from_file(cls, path: str | Path, origin: dns.name.Name | str) -> Zone:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ZoneError(f"{path}: cannot read: {exc}") from None
        try:
            return cls.from_text(text, origin)
        except ZoneError as exc:
            raise ZoneError(f"{path}: {exc}") from None

    @classmethod
    def _from_dnszone(cls, loaded: dns.zone.Zone) -> Zone:
        origin = loaded.origin
        assert origin is not None
        nodes: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]] = {}
        for name, node in loaded.nodes.items():
            owner = name.derelativize(origin)
            for rdataset in node.rdatasets:
                if rdataset.rdtype in SIGNER_TYPES:
                    # A pre-signed input is re-signed by us: its old signatures and chain would be stale.
                    continue
                if rdataset.rdclass != IN:
                    raise ZoneError(f"{owner}: only class IN is served")
                nodes.setdefault(owner, {})[rdataset.rdtype] = rdataset
        return cls(origin, nodes)

    def with_changes(self, changes: Iterable[Change], serial: int | None = None) -> Zone:
        """A new version with ``changes`` applied and the SOA serial set to ``serial`` (or advanced by one).

        Incremental: the indexes are :class:`Layered` over this version's (unchanged nodes are shared: versions
        never modify their nodes), updated for the changed names only — names added or removed, and the empty
        non-terminals above them. Only a change that moves a delegation rebuilds the version whole."""
        updates: dict[dns.name.Name, Node] = {}
        for change in changes:
            node = dict(updates[change.name] if change.name in updates else self.nodes.get(change.name, {}))
            if change.rdataset is None or len(change.rdataset) == 0:
                node.pop(change.rdtype, None)
            else:
                node[change.rdtype] = change.rdataset
            updates[change.name] = node
        touched = frozenset(updates)
        soa = self.soa()
        new_serial = next_serial(soa.serial) if serial is None else serial
        soa_set = dns.rdataset.Rdataset(IN, SOA)
        soa_set.update_ttl(self.nodes[self.origin][SOA].ttl)
        soa_set.add(soa.replace(serial=new_serial))
        apex = updates[self.origin] if self.origin in updates else self.nodes[self.origin]
        updates[self.origin] = {**apex, SOA: soa_set}
        if any((NS in updates[name]) != (name in self.cuts) for name in touched if name != self.origin):
            nodes = dict(self.nodes)
            nodes.update(updates)
            return Zone(self.origin, nodes)
        return self._extended(updates, touched)

    def _extended(self, updates: dict[dns.name.Name, Node], touched: frozenset[dns.name.Name]) -> Zone:
        origin = self.origin
        for name, node in updates.items():
            if node:
                _check_node(origin, name, node)
        zone = Zone.__new__(Zone)
        zone.origin = origin
        zone.nodes = self.nodes.changed({name: node or Layered.GONE for name, node in updates.items()})
        if not zone.nodes.get(origin, {}).get(NS):
            raise ZoneError(f"zone {origin} has no NS records at its apex")
        zone.serial = updates[origin][SOA][0].serial
        zone._negative_soa = None
        # Never below the largest TTL of the data: a removal keeps the bound until the next rebuild.
        zone._max_ttl = self._max_ttl
        if zone._max_ttl is not None:
            zone._max_ttl = max([zone._max_ttl, *(rds.ttl for node in updates.values() for rds in node.values())])
        zone.cuts = self.cuts  # unchanged: a change of delegations rebuilds
        zone.touched = touched
        existing: dict[dns.name.Name, Any] = {}

        def count(name: dns.name.Name) -> int | None:
            value: int | None = existing[name] if name in existing else self.existing.get(name)
            return None if value is Layered.GONE else value

        for name in touched:
            if updates[name]:
                _add_name(count, existing.__setitem__, name)
        for emptied in touched:
            name = emptied
            while name != origin and name not in zone.nodes and count(name) == 0:
                existing[name] = Layered.GONE
                name = name.parent()
                existing[name] = (count(name) or 1) - 1
        zone.existing = self.existing.changed(existing)
        return zone

    # -- reading ---------------------------------------------------------------------------------------------

    def soa(self) -> dns.rdtypes.ANY.SOA.SOA:
        soa: dns.rdtypes.ANY.SOA.SOA = self.nodes[self.origin][SOA][0]
        return soa

    def soa_rrset(self) -> dns.rrset.RRset:
        return rrset_of(self.origin, self.nodes[self.origin][SOA])

    def negative_soa(self) -> dns.rrset.RRset:
        """The SOA RRset of negative answers (at the negative TTL): one object per version, shared by every
        negative answer (its signature is then found by identity); do not modify it."""
        if self._negative_soa is None:
            soa = self.soa_rrset()
            soa.update_ttl(self.negative_ttl())
            self._negative_soa = soa
        return self._negative_soa

    def negative_ttl(self) -> int:
        """RFC 2308 §5 / RFC 9077: the lesser of the SOA TTL and the SOA MINIMUM field."""
        soa_set = self.nodes[self.origin][SOA]
        minimum: int = soa_set[0].minimum
        return min(soa_set.ttl, minimum)

    def max_ttl(self) -> int:
        if self._max_ttl is None:
            self._max_ttl = max(rds.ttl for node in self.nodes.values() for rds in node.values())
        return self._max_ttl

    def get(self, name: dns.name.Name, rdtype: int) -> dns.rdataset.Rdataset | None:
        node = self.nodes.get(name)
        return None if node is None else node.get(rdtype)

    def cut_above(self, name: dns.name.Name, include_self: bool) -> dns.name.Name | None:
        """The highest delegation point on the way from the apex down to ``name`` (RFC 1034 §4.3.2 step
        3b)."""
        if not self.cuts:
            return None
        labels = len(name) - len(self.origin)
        for depth in range(1, labels + (1 if include_self else 0)):
            candidate = name.split(len(self.origin) + depth)[1]
            if candidate in self.cuts:
                return candidate
        return None

    def authoritative_names(self) -> Iterator[dns.name.Name]:
        """Names this zone is authoritative for (the NSEC3 chain): existing names not below a cut."""
        for name in self.existing:
            if self.cut_above(name, include_self=False) is None:
                yield name

    def rrsets(self) -> Iterator[dns.rrset.RRset]:
        for name in sorted(self.nodes):
            for rdtype in sorted(self.nodes[name]):
                yield rrset_of(name, self.nodes[name][rdtype])


def _check_node(origin: dns.name.Name, name: dns.name.Name, node: Node) -> None:
    if not name.is_subdomain(origin):
        raise ZoneError(f"{name} is outside zone {origin}")
    if CNAME in node and len(set(node) - {CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}) > 0:
        raise ZoneError(f"{name} has a CNAME beside other data")


def _add_name(
    count: Callable[[dns.name.Name], int | None], store: Callable[[dns.name.Name, int], None], name: dns.name.Name
) -> None:
    """Enter ``name`` and the empty non-terminals above it into an existing-names index (name → number of
    existing names directly below), read by ``count`` (None: absent) and written by ``store``."""
    child = False
    while True:
        have = count(name)
        if have is not None:
            if child:
                store(name, have + 1)
            return
        store(name, 1 if child else 0)
        child = True
        name = name.parent()


def rrset_of(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    rrset.update(rdataset)
    return rrset


def type_text(rdtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))


SerialPolicy = Literal["increment", "unixtime", "dateserial"]


def next_serial(serial: int, policy: SerialPolicy = "increment", now: float | None = None) -> int:
    """The serial after ``serial`` (RFC 1982 arithmetic, skipping 0: some secondaries treat 0 specially).

    As Knot's ``serial-policy``: ``increment`` adds one; ``unixtime`` is the current time in seconds and
    ``dateserial`` is YYYYMMDDnn, each only when that is ahead of ``serial`` (else one more than ``serial``, so
    the serial never goes back).
    """
    incremented = (serial + 1) % (1 << 32) or 1
    if policy == "increment":
        return incremented
    t = time.time() if now is None else now
    wanted = int(t) if policy == "unixtime" else int(time.strftime("%Y%m%d", time.gmtime(t))) * 100
    wanted %= 1 << 32
    return wanted if serial_gt(wanted, serial) else incremented


def serial_gt(a: int, b: int) -> bool:
    """RFC 1982: ``a`` is after ``b``."""
    return a != b and ((a - b) % (1 << 32)) < (1 << 31)
