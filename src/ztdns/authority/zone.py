"""An authoritative zone as an immutable snapshot of RRsets, with the indexes answering needs.

A :class:`Zone` never changes after it is built: an update makes a new snapshot (``with_changes``) and the
service swaps it in, so an answer being built never sees half an update, and a transfer streams one version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


class Zone:
    """One version of a zone. ``nodes`` maps owner names to their RRsets by type."""

    __slots__ = ("_max_ttl", "_negative_soa", "cuts", "existing", "nodes", "origin", "serial", "touched")

    def __init__(self, origin: dns.name.Name, nodes: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]]) -> None:
        self.origin = origin
        self.nodes: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]] = {n: d for n, d in nodes.items() if d}
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
        # Every name that exists in the sense of RFC 4592: names with data and the empty non-terminals above
        # them.
        self.existing: set[dns.name.Name] = set()
        # Delegation points: NS RRsets anywhere below the apex.
        self.cuts: set[dns.name.Name] = set()
        for name, node in self.nodes.items():
            if not name.is_subdomain(origin):
                raise ZoneError(f"{name} is outside zone {origin}")
            if CNAME in node and len(set(node) - {CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}) > 0:
                raise ZoneError(f"{name} has a CNAME beside other data")
            if NS in node and name != origin:
                self.cuts.add(name)
            above = name
            while above not in self.existing and above != origin:
                self.existing.add(above)
                above = above.parent()
        self.existing.add(origin)

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

        Incremental: unchanged nodes are shared with this version (versions never modify their nodes), and the
        indexes are copied and extended for the changed names only — unless a change removes a name or moves a
        delegation, which rebuilds them whole."""
        nodes = dict(self.nodes)
        touched: set[dns.name.Name] = set()
        for change in changes:
            node = dict(nodes.get(change.name, {}))
            if change.rdataset is None or len(change.rdataset) == 0:
                node.pop(change.rdtype, None)
            else:
                node[change.rdtype] = change.rdataset
            nodes[change.name] = node
            touched.add(change.name)
        soa = self.soa()
        new_serial = next_serial(soa.serial) if serial is None else serial
        soa_set = dns.rdataset.Rdataset(IN, SOA)
        soa_set.update_ttl(self.nodes[self.origin][SOA].ttl)
        soa_set.add(soa.replace(serial=new_serial))
        nodes[self.origin] = {**nodes[self.origin], SOA: soa_set}
        below_apex = touched - {self.origin}
        if any(not nodes[name] for name in touched) or any(
            (NS in nodes[name]) != (name in self.cuts) for name in below_apex
        ):
            return Zone(self.origin, nodes)
        return self._extended(nodes, frozenset(touched))

    def _extended(
        self, nodes: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]], touched: frozenset[dns.name.Name]
    ) -> Zone:
        zone = Zone.__new__(Zone)
        zone.origin = self.origin
        zone.nodes = nodes
        zone.serial = nodes[self.origin][SOA][0].serial
        zone._negative_soa = None
        zone._max_ttl = None
        zone.cuts = self.cuts  # unchanged: a change of delegations rebuilds
        zone.existing = set(self.existing)
        zone.touched = touched
        for name in touched:
            node = nodes[name]
            if not name.is_subdomain(self.origin):
                raise ZoneError(f"{name} is outside zone {self.origin}")
            if CNAME in node and len(set(node) - {CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}) > 0:
                raise ZoneError(f"{name} has a CNAME beside other data")
            above = name
            while above not in zone.existing and above != self.origin:
                zone.existing.add(above)
                above = above.parent()
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
