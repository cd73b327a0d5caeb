"""RFC 2136 dynamic UPDATE, sans-IO, with per-identity grants.

An identity (the TSIG key's identity, or the verified client certificate's SPIFFE ID) may only touch names and
types a :class:`Grant` allows. A grant is a template: ``spiffe://corp/ns/{ns}/sa/{sa}`` captures path
segments, and ``{sa}.{ns}.svc.corp.internal`` (a name pattern of the policy grammar, so ``*.`` and ``**.``
work) says what the captured identity may register. Updates are all-or-nothing: any refused record leaves the
zone unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.update

from ztdns.authority.zone import NS, SIGNER_TYPES, SOA, Change, Zone, ZoneError, type_text
from ztdns.patterns import PatternError, Scope, parse_pattern

_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
DEFAULT_TYPES = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.TXT})


class UpdateRefused(Exception):
    """An update that must be answered with ``rcode`` and leaves the zone as it was."""

    def __init__(self, rcode: int, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode


@dataclass(frozen=True, slots=True)
class Grant:
    identity: str
    names: tuple[str, ...]
    types: frozenset[int] = DEFAULT_TYPES

    def _captures(self, identity: str) -> dict[str, str] | None:
        parts = _FIELD.split(self.identity)
        # Literal pieces are escaped; each {field} matches one path segment that is also one DNS label, so an
        # identity like ns/a.b cannot reach into another namespace's names.
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[A-Za-z0-9_-]{{1,63}})" for i, p in enumerate(parts))
        match = re.fullmatch(regex, identity)
        return None if match is None else {k: v.lower() for k, v in match.groupdict().items()}

    def allows(self, identity: str, name: dns.name.Name, rdtype: int) -> bool:
        if rdtype not in self.types:
            return False
        captures = self._captures(identity)
        if captures is None:
            return False
        text = name.to_text(omit_final_dot=True).lower()
        for template in self.names:
            try:
                pattern = parse_pattern(_FIELD.sub(lambda m: captures.get(m.group(1), "\x00"), template))
            except PatternError:
                continue  # a template naming a field the identity template lacks
            if pattern.scope is Scope.EXACT and text == pattern.base:
                return True
            if pattern.scope is Scope.ONE_LABEL and text.partition(".")[2] == pattern.base and "." in text:
                return True
            if pattern.scope is Scope.ANY_DEPTH and text.endswith("." + pattern.base):
                return True
        return False


def _in_use(zone: Zone, name: dns.name.Name) -> bool:
    return name in zone.nodes


def check_prerequisites(zone: Zone, prerequisites: Iterable[dns.rrset.RRset]) -> None:
    """RFC 2136 §3.2."""
    value_sets: dict[tuple[dns.name.Name, int], dns.rdataset.Rdataset] = {}
    for rr in prerequisites:
        if rr.ttl != 0:
            raise UpdateRefused(dns.rcode.FORMERR, "prerequisite with a TTL")
        if not rr.name.is_subdomain(zone.origin):
            raise UpdateRefused(dns.rcode.NOTZONE, f"{rr.name} is outside the zone")
        exists = zone.get(rr.name, rr.rdtype) is not None
        if rr.deleting == dns.rdataclass.ANY:
            if rr.rdtype == dns.rdatatype.ANY and not _in_use(zone, rr.name):
                raise UpdateRefused(dns.rcode.NXDOMAIN, f"{rr.name} does not exist")
            if rr.rdtype != dns.rdatatype.ANY and not exists:
                raise UpdateRefused(dns.rcode.NXRRSET, f"{rr.name} {type_text(rr.rdtype)} does not exist")
        elif rr.deleting == dns.rdataclass.NONE:
            if rr.rdtype == dns.rdatatype.ANY and _in_use(zone, rr.name):
                raise UpdateRefused(dns.rcode.YXDOMAIN, f"{rr.name} exists")
            if rr.rdtype != dns.rdatatype.ANY and exists:
                raise UpdateRefused(dns.rcode.YXRRSET, f"{rr.name} {type_text(rr.rdtype)} exists")
        else:
            value_sets.setdefault((rr.name, rr.rdtype), dns.rdataset.Rdataset(rr.rdclass, rr.rdtype)).union_update(rr)
    for (name, rdtype), wanted in value_sets.items():
        have = zone.get(name, rdtype)
        if have is None or set(have) != set(wanted):
            raise UpdateRefused(dns.rcode.NXRRSET, f"{name} {type_text(rdtype)} differs")


def apply_update(
    message: dns.update.UpdateMessage,
    zone: Zone,
    identity: str | None,
    grants: Iterable[Grant],
    serial: int | None = None,
    max_ttl: int | None = None,
) -> tuple[Zone, list[Change]]:
    """The zone after ``message`` (same object if nothing changed) with SOA serial ``serial`` (default: one
    more) and the changes; raises UpdateRefused (also for a TTL above ``max_ttl``)."""
    grants = tuple(grants)
    check_prerequisites(zone, message.prerequisite)
    work: dict[tuple[dns.name.Name, int], dns.rdataset.Rdataset | None] = {}

    def current(name: dns.name.Name, rdtype: int) -> dns.rdataset.Rdataset | None:
        key = (name, rdtype)
        return work[key] if key in work else zone.get(name, rdtype)

    def authorise(name: dns.name.Name, rdtype: int) -> None:
        if identity is None or not any(g.allows(identity, name, rdtype) for g in grants):
            who = identity or "an unauthenticated client"
            raise UpdateRefused(dns.rcode.REFUSED, f"{who} may not update {name} {type_text(rdtype)}")

    for rr in message.update:
        if not rr.name.is_subdomain(zone.origin):
            raise UpdateRefused(dns.rcode.NOTZONE, f"{rr.name} is outside the zone")
        if rr.rdtype in SIGNER_TYPES or (rr.name == zone.origin and rr.rdtype in (SOA, NS)):
            raise UpdateRefused(dns.rcode.REFUSED, f"{type_text(rr.rdtype)} records are managed by the server")
        if rr.deleting is None:
            if dns.rdatatype.is_metatype(rr.rdtype) or rr.rdclass != dns.rdataclass.IN:
                raise UpdateRefused(dns.rcode.FORMERR, f"cannot add type {rr.rdtype} class {rr.rdclass}")
            authorise(rr.name, rr.rdtype)
            if max_ttl is not None and rr.ttl > max_ttl:
                raise UpdateRefused(dns.rcode.REFUSED, f"TTL {rr.ttl} is above the zone's max_zone_ttl {max_ttl}")
            merged = dns.rdataset.Rdataset(dns.rdataclass.IN, rr.rdtype)
            merged.update_ttl(rr.ttl)
            old = current(rr.name, rr.rdtype)
            if old is not None:
                merged.union_update(old)
            merged.union_update(rr)
            merged.ttl = rr.ttl
            work[(rr.name, rr.rdtype)] = merged
            continue
        if rr.ttl != 0:
            raise UpdateRefused(dns.rcode.FORMERR, "delete with a TTL")
        types: list[int] = [rr.rdtype]
        if rr.rdtype == dns.rdatatype.ANY:
            node = zone.nodes.get(rr.name, {})
            types = [t for t in {*node, *(t for (n, t) in work if n == rr.name)} if current(rr.name, t) is not None]
        for rdtype in types:
            authorise(rr.name, rdtype)
            old = current(rr.name, rdtype)
            if old is None:
                continue
            if rr.deleting == dns.rdataclass.NONE:
                remaining = old.copy()
                remaining.difference_update(rr)
                work[(rr.name, rdtype)] = remaining if len(remaining) else None
            else:
                work[(rr.name, rdtype)] = None
    changes = [Change(name, rdtype, rds) for (name, rdtype), rds in work.items() if rds != zone.get(name, rdtype)]
    if not changes:
        return zone, []
    try:
        return zone.with_changes(changes, serial), changes
    except ZoneError as exc:
        raise UpdateRefused(dns.rcode.REFUSED, str(exc)) from None
