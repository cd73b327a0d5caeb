"""RPZ zone files as list sources: QNAME triggers and their actions (docs/policy.md, "RPZ").

A response-policy zone is a DNS zone whose owner names (relative to the zone's origin) are triggers and whose
records are actions. Supported, as Unbound and BIND read them:

    ads.example        CNAME .               NXDOMAIN
    *.ads.example      CNAME .               the same for every name below (not the apex)
    nodata.example     CNAME *.              NODATA
    ok.example         CNAME rpz-passthru.   PASSTHRU: an exception (overrides list denies)
    drop.example       CNAME rpz-drop.       DROP: no answer at all
    page.example       CNAME block.corp.     local data: a CNAME to that name
    sink.example       A 192.0.2.1           local data: these addresses (A and AAAA by query type)

Response-IP triggers (``rpz-ip``) name an address prefix, least significant label first, with the same actions;
they apply to the A and AAAA records of allowed answers (:meth:`ztdns.policy.View.decide_addresses`):

    32.1.0.0.10.rpz-ip          CNAME .    answers with 10.0.0.1 in them become NXDOMAIN
    24.0.2.0.192.rpz-ip         CNAME .    any address in 192.0.2.0/24
    48.zz.db8.2001.rpz-ip       CNAME .    2001:db8::/48 ('zz' stands for the longest run of zero groups)

Skipped and counted by reason: NSDNAME, NSIP and client-IP triggers, ``rpz-tcp-only``, wildcard CNAME targets,
local data of other types, malformed IP triggers. The file is parsed by dnspython as a whole (it must carry
``$ORIGIN`` or an absolute SOA owner), so explain shows the file but not the line.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import dns.exception
import dns.name
import dns.node
import dns.rdatatype
import dns.zone

from ztdns.patterns import Scope
from ztdns.policy.lists import STANDARD_SPECS, EntryKind, ListFile, LocalData, Network, Spec, Tally

_SNIFF_BYTES = 4096
# A zone file: a '$ORIGIN'/'$TTL' directive, or an SOA record, near the top. List files have neither.
_ZONE_MARK = re.compile(rb"^[ \t]*\$(?:ORIGIN|TTL)\b|[ \t]SOA[ \t]", re.MULTILINE | re.IGNORECASE)
_SPECIAL_TRIGGERS = ("rpz-nsdname", "rpz-nsip", "rpz-client-ip")
_WILDCARD_ROOT = dns.name.from_text("*.")
_PASSTHRU = dns.name.from_text("rpz-passthru.")
_DROP = dns.name.from_text("rpz-drop.")
_TCP_ONLY = dns.name.from_text("rpz-tcp-only.")


def is_rpz(path: Path) -> bool:
    """Whether the file at ``path`` is a zone file (RPZ) rather than a line-based list."""
    with path.open("rb") as handle:
        return _ZONE_MARK.search(handle.read(_SNIFF_BYTES)) is not None


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


class _Specs:
    """Spec interning: the standard specs first, then one per distinct (scope, action, local data)."""

    def __init__(self) -> None:
        self.specs = list(STANDARD_SPECS)
        self.bits = {spec: 1 << index for index, spec in enumerate(self.specs)}

    def bit(self, spec: Spec) -> int:
        found = self.bits.get(spec)
        if found is None:
            found = self.bits[spec] = 1 << len(self.specs)
            self.specs.append(spec)
        return found


def read_rpz(path: Path, shown_as: str) -> ListFile:
    """Parse an RPZ zone file into list entries; raises OSError if it cannot be read."""
    tally = Tally()
    try:
        zone = dns.zone.from_file(str(path), origin=None, relativize=False, check_origin=False)
    except dns.exception.DNSException as exc:
        tally.skipped[f"rpz-unparsable:{type(exc).__name__}"] += 1
        return ListFile(shown_as, {}, tally, STANDARD_SPECS, lines_known=False)
    origin = zone.origin
    assert origin is not None  # from_file sets it from $ORIGIN or the SOA, or raises
    specs = _Specs()
    entries: dict[str, int] = {}
    addresses: list[tuple[Network, int]] = []
    skipped = tally.skipped
    for owner, node in zone.nodes.items():
        tally.lines += 1
        if owner == origin:
            continue  # the zone's own SOA and NS
        relative = owner.relativize(origin)
        labels = [label.decode("ascii", "replace").lower() for label in relative.labels]
        if labels and labels[-1] == "rpz-ip":
            network = _ip_trigger(labels[:-1])
            spec = None if network is None else _action(node, Scope.EXACT, skipped)
            if network is None:
                skipped["rpz-ip-invalid"] += 1
            elif spec is not None:
                addresses.append((network, specs.bit(spec)))
            continue
        if any(label in _SPECIAL_TRIGGERS for label in labels):
            skipped[f"rpz-{next(label for label in labels if label in _SPECIAL_TRIGGERS)[4:]}-trigger"] += 1
            continue
        scope = Scope.EXACT
        if labels and labels[0] == "*":
            scope, labels = Scope.ANY_DEPTH, labels[1:]
        if not labels or "*" in labels:
            skipped["invalid"] += 1
            continue
        spec = _action(node, scope, skipped)
        if spec is None:
            continue
        base = ".".join(labels)
        entries[base] = entries.get(base, 0) | specs.bit(spec)
    parsed = ListFile.of(shown_as, entries, tally, tuple(specs.specs), lines_known=False)
    parsed.addresses = addresses
    return parsed


def _ip_trigger(labels: list[str]) -> Network | None:
    """The prefix of an ``rpz-ip`` owner's labels (``32.1.0.0.10``: 10.0.0.1/32), or None if malformed."""
    if len(labels) < 2 or not labels[0].isdigit():
        return None
    length, parts = int(labels[0]), labels[:0:-1]
    try:
        if len(parts) == 4 and "zz" not in parts:
            return ipaddress.IPv4Network(f"{'.'.join(parts)}/{length}")
        text = ":".join(parts).replace("zz", "")
        if text.startswith(":") or not text:
            text = ":" + text
        if text.endswith(":") and not text.endswith("::"):
            text += ":"
        return ipaddress.IPv6Network(f"{text}/{length}")
    except ValueError:  # a prefix with host bits set, a length too long, bad numbers
        return None


def _action(node: dns.node.Node, scope: Scope, skipped: dict[str, int]) -> Spec | None:
    """The spec of one trigger's records, or None (counted in ``skipped``) when we cannot honour them."""
    addresses: list[str] = []
    for rdataset in node.rdatasets:
        rdtype = rdataset.rdtype
        if rdtype == dns.rdatatype.CNAME:
            target = rdataset[0].target
            if target == dns.name.root:
                return Spec(scope, EntryKind.PLAIN, "nxdomain")
            if target == _WILDCARD_ROOT:
                return Spec(scope, EntryKind.PLAIN, "nodata")
            if target == _PASSTHRU:
                return Spec(scope, EntryKind.EXCEPTION)
            if target == _DROP:
                return Spec(scope, EntryKind.PLAIN, "drop")
            if target == _TCP_ONLY:
                skipped["rpz-tcp-only"] += 1
                return None
            if target.is_wild():
                skipped["rpz-cname-wildcard"] += 1
                return None
            return Spec(scope, EntryKind.PLAIN, "local", LocalData(cname=_key(target)))
        if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses.extend(rdata.address for rdata in rdataset)
        else:
            skipped[f"rpz-local-data-{dns.rdatatype.to_text(rdtype)}"] += 1
    if not addresses:
        return None
    return Spec(scope, EntryKind.PLAIN, "local", LocalData(addresses=tuple(sorted(addresses))))
