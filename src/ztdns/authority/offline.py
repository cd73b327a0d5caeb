"""Offline KSK (Knot's ``offline-ksk``): the KSK's private key lives on another machine; the server holds only
ZSKs and serves DNSKEY, CDS and CDNSKEY RRsets signed in advance.

The exchange is Knot's, in Knot's file formats (``keymgr generate-ksr`` / ``sign-ksr`` / ``import-skr``):

- **KSR** (Key Signing Request), written by the online side: per time slot, a line
  ``;; KeySigningRequest 1.0 <unix time> (<ISO time>) =====`` and the ZSK DNSKEY records published from then on
  (by the ZSK rollover plan the KSR was made from).
- **SKR** (Signed Key Response), written by the offline signer: per time slot
  ``;; SignedKeyResponse 1.0 <unix time> ...`` and the whole DNSKEY RRset (ZSKs + KSKs), the CDS/CDNSKEY
  RRsets and their RRSIGs by the KSK. Besides the KSR's slots the signer adds slots every ``lifetime - refresh``
  seconds, so the signatures served are renewed before they expire.

Both are zone-file text; a last comment line ``;; ... generated at`` ends them. An SKR is imported only when every
signature verifies against a KSK of its slot's DNSKEY RRset and every slot's ZSKs are the ones the key state
publishes then; the imported slots replace those from the new file's first slot on (so the next period's SKR can
be imported while the current one serves). The slot in force at time t is the last one starting at or before t.

Config: ``[[authority.zones]] signing.offline_ksk`` and ``signing.skr_warning``. Metric:
``ztdns_authority_skr_remaining_seconds``. No client data.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.RRSIG
import dns.rrset
import dns.zonefile

from ztdns.authority.keys import SEP_FLAG, FileKey, KeyStoreError, ZoneKey
from ztdns.authority.signing import KSK_SIGNED_TYPES, Validity, ZoneSigner

KSR = "KeySigningRequest"
SKR = "SignedKeyResponse"
_HEADER = re.compile(r"^;;\s*(KeySigningRequest|SignedKeyResponse)\s+1\.0\s+(\S+)")
log = logging.getLogger(__name__)
DNSKEY, CDS, CDNSKEY, RRSIG = dns.rdatatype.DNSKEY, dns.rdatatype.CDS, dns.rdatatype.CDNSKEY, dns.rdatatype.RRSIG


class OfflineKskError(KeyStoreError):
    """A KSR or SKR that cannot be used; the message names the file and the problem."""


def _iso(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Slot:
    """The key records in force from ``start`` until the next slot."""

    start: int
    rrsets: tuple[dns.rrset.RRset, ...]

    def get(self, rdtype: int, covers: int = 0) -> dns.rrset.RRset | None:
        return next((r for r in self.rrsets if r.rdtype == rdtype and r.covers == covers), None)

    def signatures(self) -> dict[int, dns.rrset.RRset]:
        """The RRSIG RRset of each key record type, by the type it covers."""
        return {r.covers: r for r in self.rrsets if r.rdtype == RRSIG}

    def zsks(self) -> frozenset[dns.rdtypes.ANY.DNSKEY.DNSKEY]:
        dnskeys = self.get(DNSKEY)
        return frozenset(k for k in dnskeys or () if not k.flags & SEP_FLAG)

    def expiration(self) -> int | None:
        """When the first of its signatures expires."""
        times = [sig.expiration for sigs in self.signatures().values() for sig in sigs]
        return min(times) if times else None


def render(kind: str, slots: Iterable[Slot]) -> str:
    """KSR or SKR text (``kind`` is :data:`KSR` or :data:`SKR`)."""
    lines = []
    for slot in slots:
        lines.append(f";; {kind} 1.0 {slot.start} ({_iso(slot.start)}) =========")
        lines += [rrset.to_text() for rrset in slot.rrsets]
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    lines.append(f";; {kind} 1.0 generated at {_iso(now)} by ztdns")
    return "\n".join(lines) + "\n"


def parse(text: str, kind: str, zone: dns.name.Name, source: str) -> list[Slot]:
    """The slots of a KSR or SKR file (``source`` names it in errors), in time order."""
    slots: list[Slot] = []
    start: int | None = None
    body: list[str] = []

    def close() -> None:
        if start is None:
            return
        try:
            rrsets = dns.zonefile.read_rrsets("\n".join(body), rdclass=None, origin=zone, relativize=False)
        except dns.exception.DNSException as exc:
            raise OfflineKskError(f"{source}: slot {_iso(start)}: {exc}") from None
        for rrset in rrsets:
            if rrset.name != zone or rrset.rdclass != dns.rdataclass.IN:
                raise OfflineKskError(f"{source}: slot {_iso(start)}: record of {rrset.name} (not zone {zone})")
            covered = rrset.covers if rrset.rdtype == RRSIG else rrset.rdtype
            if covered not in KSK_SIGNED_TYPES or (kind == KSR and rrset.rdtype != DNSKEY):
                raise OfflineKskError(
                    f"{source}: slot {_iso(start)}: unexpected {dns.rdatatype.to_text(rrset.rdtype)} record"
                )
        if slots and start <= slots[-1].start:
            raise OfflineKskError(f"{source}: slot {_iso(start)} is not after slot {_iso(slots[-1].start)}")
        slots.append(Slot(start, tuple(rrsets)))

    for number, line in enumerate(text.splitlines(), 1):
        match = _HEADER.match(line)
        if match is None:
            if start is None and line.strip() and not line.lstrip().startswith(";"):
                raise OfflineKskError(f"{source}:{number}: record before the first {kind} header")
            body.append(line)
            continue
        if match.group(1) != kind:
            raise OfflineKskError(f"{source}:{number}: a {match.group(1)} line in what should be a {kind} file")
        if not match.group(2).isdigit():  # the closing "generated at" line
            break
        close()
        start, body = int(match.group(2)), []
    close()
    if not slots:
        raise OfflineKskError(f"{source}: no {kind} slot")
    return slots


# -- the online side: requests and imports ---------------------------------------------------------------------


def request(zone: dns.name.Name, zsks_at: Callable[[int], Sequence[ZoneKey]], times: Iterable[int], ttl: int) -> str:
    """The KSR text: one slot per time at which the published ZSK set (``zsks_at``) changes."""
    slots: list[Slot] = []
    previous: set[int] | None = None
    ordered = sorted(set(times))
    for t in ordered:
        keys = zsks_at(t)
        tags = {k.tag for k in keys}
        if not keys:
            raise OfflineKskError(f"no ZSK is published at {_iso(t)}")
        if tags == previous and t != ordered[-1]:
            continue
        previous = tags
        rrset = dns.rrset.RRset(zone, dns.rdataclass.IN, DNSKEY)
        for key in keys:
            rrset.add(key.dnskey, ttl)
        slots.append(Slot(t, (rrset,)))
    return render(KSR, slots)


def verify(
    slots: Sequence[Slot],
    zone: dns.name.Name,
    zsks_at: Callable[[int], Iterable[dns.rdtypes.ANY.DNSKEY.DNSKEY]],
    event_times: Iterable[int],
    source: str,
) -> None:
    """Refuse an SKR (OfflineKskError naming ``source`` and the problem) unless every DNSKEY, CDS and CDNSKEY
    RRset of every slot is signed by a KSK (SEP key) of that slot's DNSKEY RRset, valid from the slot's start to
    the next slot's, and the ZSKs in force at every slot start and ZSK event (``event_times``) within the SKR are
    the ones the key state publishes (``zsks_at``)."""
    for index, slot in enumerate(slots):
        where = f"{source}: slot {_iso(slot.start)}"
        dnskeys = slot.get(DNSKEY)
        if dnskeys is None:
            raise OfflineKskError(f"{where}: no DNSKEY RRset")
        ksks = [k for k in dnskeys if k.flags & SEP_FLAG]
        if not ksks:
            raise OfflineKskError(f"{where}: no KSK (SEP flag) in the DNSKEY RRset")
        ksk_set = dns.rrset.RRset(zone, dns.rdataclass.IN, DNSKEY)
        for key in ksks:
            ksk_set.add(key, dnskeys.ttl)
        end = slots[index + 1].start if index + 1 < len(slots) else None
        signatures = slot.signatures()
        for rdtype in (DNSKEY, CDS, CDNSKEY):
            rrset = slot.get(rdtype)
            if rrset is None:
                continue
            name = dns.rdatatype.to_text(rdtype)
            sigs = signatures.get(rdtype)
            if sigs is None:
                raise OfflineKskError(f"{where}: the {name} RRset has no RRSIG")
            for sig in sigs:
                for t in (slot.start, end) if end is not None else (slot.start,):
                    try:
                        dns.dnssec.validate_rrsig(rrset, sig, {zone: ksk_set}, now=t)
                    except dns.exception.ValidationFailure as exc:
                        raise OfflineKskError(
                            f"{where}: RRSIG {name} by key {sig.key_tag} does not verify against the slot's KSKs "
                            f"at {_iso(t)}: {exc}"
                        ) from None
    first, last = slots[0].start, slots[-1].start
    for t in sorted({s.start for s in slots} | {t for t in event_times if first <= t <= last}):
        served = in_force(slots, t)
        assert served is not None
        wanted = frozenset(zsks_at(t))
        if served.zsks() != wanted:
            tags = sorted(dns.dnssec.key_id(k) for k in served.zsks()) or "none"
            want = sorted(dns.dnssec.key_id(k) for k in wanted) or "none"
            raise OfflineKskError(
                f"{source}: at {_iso(t)} the SKR publishes ZSKs {tags} but the key state has {want} "
                "(an SKR for another KSR, or the ZSK plan changed: generate and sign a new KSR)"
            )


def in_force(slots: Sequence[Slot], t: float) -> Slot | None:
    """The slot serving at ``t``: the last one started (None before the first)."""
    current = None
    for slot in slots:
        if slot.start > t:
            break
        current = slot
    return current


class SkrStore:
    """The imported SKR of one zone, ``<state_dir>/<zone>.skr``, re-read when the file changes (an import by the
    CLI reaches a running server at its next tick)."""

    def __init__(self, path: Path, zone: dns.name.Name) -> None:
        self.path = path
        self.zone = zone
        self._mtime: int | None = None
        self._slots: list[Slot] = []

    def slots(self) -> list[Slot]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._slots = None, []
            return []
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._slots = parse(self.path.read_text(), SKR, self.zone, str(self.path))
            except (OSError, UnicodeDecodeError, OfflineKskError) as exc:
                # Only imports (verified) write it: a damaged file keeps the slots read before serving.
                log.error("%s: unreadable, keeping the slots read before: %s", self.path, exc)
        return self._slots

    def save(self, new: list[Slot]) -> list[Slot]:
        """Keep the imported slots before ``new`` starts, then ``new``; returns what is stored."""
        slots = [s for s in self.slots() if s.start < new[0].start] + new
        tmp = self.path.with_suffix(".skr.tmp")
        tmp.write_text(render(SKR, slots))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        return slots


# -- the offline side: the KSK and its signatures --------------------------------------------------------------


def ksk_files(directory: Path, zone: dns.name.Name) -> list[Path]:
    return sorted(directory.glob(f"K{zone.to_text()}+*.pem"))


def load_ksks(directory: Path, zone: dns.name.Name) -> list[ZoneKey]:
    files = ksk_files(directory, zone)
    if not files:
        raise OfflineKskError(f"{directory}: no KSK of {zone} (ztdns offline-ksk generate)")
    return [ZoneKey.make(zone, FileKey.load(path), sep=True) for path in files]


def sign(
    ksr: Sequence[Slot], ksks: Sequence[ZoneKey], validity: Validity, cds: bool, digest: str = "SHA256"
) -> list[Slot]:
    """The SKR slots for a KSR: each KSR slot's ZSKs with the KSKs, signed from the slot's start; between KSR
    slots further slots every ``lifetime - refresh`` so no signature served is near its expiry."""
    step = validity.lifetime - validity.refresh
    fixed = Validity(validity.lifetime, 0, validity.refresh)  # no jitter: one expiry per slot
    times: list[tuple[int, Slot]] = []
    for index, slot in enumerate(ksr):
        end = ksr[index + 1].start if index + 1 < len(ksr) else slot.start + 1
        t = slot.start
        while t < end:
            times.append((t, slot))
            t += step
    out = []
    for t, slot in times:
        zsks = slot.get(DNSKEY)
        if zsks is None:
            raise OfflineKskError(f"KSR slot {_iso(slot.start)} lists no DNSKEY")
        ttl = zsks.ttl
        zone = zsks.name
        dnskeys = dns.rrset.RRset(zone, dns.rdataclass.IN, DNSKEY)
        for rdata in [*zsks, *(k.dnskey for k in ksks)]:
            dnskeys.add(rdata, ttl)
        rrsets = [dnskeys]
        if cds:
            cds_set = dns.rrset.RRset(zone, dns.rdataclass.IN, CDS)
            cdnskey_set = dns.rrset.RRset(zone, dns.rdataclass.IN, CDNSKEY)
            for key in ksks:
                cds_set.add(key.cds(digest), ttl)
                cdnskey_set.add(key.cdnskey(), ttl)
            rrsets += [cdnskey_set, cds_set]
        # Signed as of the slot's start (inception an hour before it, as online signatures are).
        signer = ZoneSigner(zone, fixed, clock=float(t).__float__)
        signer.set_keys((), ksks)
        sigs = [signer.rrsig(rrset) for rrset in rrsets]
        out.append(Slot(t, tuple(rrsets) + tuple(s for s in sigs if s is not None)))
    return out
