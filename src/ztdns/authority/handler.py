"""The authority's handler: served zones (data + signing state) and the transport ``Handler`` over them.

Sans-IO: ``respond(wire, client)`` turns one request into response wires (several for a zone transfer);
``tick()`` moves key timelines forward and reports zones whose contents changed (to NOTIFY secondaries). The
asyncio adapter in :mod:`ztdns.authority.daemon` only pumps bytes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rrset
import dns.tsig
import dns.update
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.authority.answer import EDNS_CO, SignedView, answer
from ztdns.authority.kasp import KeyManager, KeySet
from ztdns.authority.nsec3 import CompactDenial, Nsec3Chain, nsec3param_rdata
from ztdns.authority.rrl import RateLimiter, Verdict
from ztdns.authority.signing import KSK_SIGNED_TYPES, Validity, ZoneSigner
from ztdns.authority.transfer import (
    Snapshot,
    TransferAcl,
    axfr_messages,
    differences,
    records_with_sources,
    snapshot,
    unsigned_in_transfer,
)
from ztdns.authority.update import Grant, UpdateRefused, apply_update
from ztdns.authority.zone import (
    Change,
    SerialPolicy,
    Zone,
    ZoneError,
    next_serial,
    rrset_of,
    serial_gt,
    type_text,
)
from ztdns.client import ClientInfo
from ztdns.detect.cookies import ServerCookies
from ztdns.identity.certificates import is_spiffe_id
from ztdns.model import Kind
from ztdns.observe.events import Answered
from ztdns.observe.metrics import Metrics
from ztdns.replay import Replay, Replays
from ztdns.wire.header import error_response, header_only, udp_limit
from ztdns.wire.query import parse_query
from ztdns.wire.render import render

log = logging.getLogger(__name__)
Clock = Callable[[], float]
# How long a rendered response is replayed; signatures are refreshed days before expiry, so this is far inside.
RENDERED_SECONDS = 30.0


DEFAULT_MAX_TTL = 86400
# RFC 8078 §4: the CDS and CDNSKEY records asking the parent to delete the DS (the zone goes insecure).
DELETE_CDS = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDS, "0 0 0 00")
DELETE_CDNSKEY = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDNSKEY, "0 3 0 AA==")


@dataclass(frozen=True, slots=True)
class Quota:
    """What one identity may hold in a zone's dynamic records (0: no limit)."""

    records: int = 100
    rdata_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    origin: dns.name.Name
    grants: tuple[Grant, ...] = ()
    transfer: TransferAcl = field(default_factory=TransferAcl)
    notify: tuple[tuple[str, int], ...] = ()
    notify_key: dns.name.Name | None = None  # the TSIG key NOTIFY messages are signed with
    denial: Literal["nsec3", "compact"] = "nsec3"
    validity: Validity = field(default_factory=Validity)
    # Keeps dynamic registrations and the serial across restarts; None keeps them in memory only.
    state_path: Path | None = None
    serial_policy: SerialPolicy = "increment"
    cds_digest: Literal["SHA256", "SHA384"] = "SHA256"  # the CDS records' digest (RFC 8624: both recommended)
    # No record of any input (zone file, UPDATE, registration) may have a longer TTL (Knot's zone-max-ttl).
    # When set explicitly it is also the TTL key rollovers wait for; by default they wait for the largest TTL
    # of the zone's data when the rollover starts (bounded by this).
    max_ttl: int = DEFAULT_MAX_TTL
    max_ttl_explicit: bool = False
    quota: Quota = field(default_factory=Quota)
    # A digest of the zone's source (file and inline records): a restart that finds it changed serves a new
    # serial even when the file kept its own.
    source: str = ""
    # The parent zone's servers, asked for our DS while a KSK is in submission (Knot's submission ``parent``):
    # the submission completes (ds_seen) when every one of them serves the new key's DS.
    parents: tuple[tuple[str, int], ...] = ()
    parent_check_interval: float = 3600.0
    # The parent's primary, sent the new DS RRset by a dynamic update when a KSK enters submission (Knot's
    # ``ds-push``), signed with the TSIG key ``ds_push_key`` when set.
    ds_push: tuple[str, int] | None = None
    ds_push_key: dns.name.Name | None = None
    # Offline KSK: warn when the imported SKR's last signatures expire within this many seconds.
    skr_warning: float = 14 * 86400.0


# The state's journal of updates is folded into the state file after this many lines (or one per dynamic RRset).
JOURNAL_LINES_MIN = 1000

# Differences kept for IXFR: versions a secondary may be behind by and still get an incremental transfer.
JOURNAL_VERSIONS = 50
# What changed in each published version, kept for this many versions: between two transfers more versions
# than this make the next IXFR difference a comparison of the whole zone.
DELTA_VERSIONS = 1000


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """From serial ``since`` to ``serial``: the RRsets deleted and added (signatures and NSEC3 included)."""

    since: int
    since_soa: dns.rrset.RRset
    serial: int
    soa: dns.rrset.RRset
    deleted: list[dns.rrset.RRset]
    added: list[dns.rrset.RRset]


@dataclass(frozen=True, slots=True)
class Version:
    """What one published zone version answers from, swapped in one assignment so a reader on another thread
    (the UDP lane) never sees the data of one version with the denial chain of another."""

    zone: Zone
    view: SignedView | None = None
    chain: Nsec3Chain | None = None


class ServedZone:
    """One zone: the unsigned data (``base``), the served version with key records, and how to sign it."""

    def __init__(
        self, settings: ZoneSettings, base: Zone, keys: KeyManager | None = None, clock: Clock = time.time
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self.signer = ZoneSigner(base.origin, settings.validity, clock) if keys else None
        self._dynamic: dict[tuple[dns.name.Name, int], dns.rdataset.Rdataset | None] = {}
        # Who registered each dynamic RRset (None: the zone's operator, or before owners were recorded), its
        # (records, bytes of rdata), and per identity their sum: the quota check reads one identity's usage,
        # not every registration.
        self._owners: dict[tuple[dns.name.Name, int], str] = {}
        self._footprints: dict[tuple[dns.name.Name, int], tuple[int, int]] = {}
        self._usage: dict[str, list[int]] = {}
        # Updates appended to the state's journal since the state was last written whole.
        self._appended = 0
        check_ttls(base, settings.max_ttl)
        self._keyset: KeySet | None = None
        if keys is not None:
            keys.ensure_keys()
            self._keyset = keys.keyset()
        # What secondaries got in the last full transfer, and the differences between transferred versions
        # (IXFR, RFC 1995; in memory: after a restart an IXFR is answered with a full transfer).
        self._snapshot: tuple[Version, Snapshot] | None = None
        self._journal: list[JournalEntry] = []
        # Per published version (by serial), what changed from the one before: owner names and NSEC3 hashes
        # (None: built whole). The next IXFR difference is then found by comparing those alone.
        self._deltas: list[tuple[int, tuple[frozenset[dns.name.Name], frozenset[bytes]] | None]] = []
        # DS polling and push (the parent side of a KSK roll): the next check, and the keys already pushed.
        self._next_parent_check = 0.0
        self._next_skr_warning = 0.0
        self._pushed: dict[int, float] = {}  # key tag → when to push its DS (again)
        # Signatures made before a restart may be held by secondaries: their refresh time is kept in the state.
        self._resign_at = self._saved_resign_at = float("inf")
        base, changed = self._restore(base)
        self._publish(base)
        if changed:
            self._save()  # the state the next start compares with

    @property
    def origin(self) -> dns.name.Name:
        return self.settings.origin

    @property
    def zone(self) -> Zone:
        return self.version.zone

    @property
    def view(self) -> SignedView | None:
        return self.version.view

    # -- versions --------------------------------------------------------------------------------------------

    def _publish(self, base: Zone) -> None:
        self.base = base
        self._delta(base.serial, None)
        if self._keyset is None or self.signer is None:
            self.version = Version(base)
            return
        ks = self._keyset
        apex: list[Change] = []
        ttl = self.keys.policy.dnskey_ttl if self.keys else 3600

        def rdataset(rdtype: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rdataset.Rdataset | None:
            rds = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype))
            for rdata in rdatas:
                rds.add(rdata, ttl)
            return rds if len(rds) else None

        origin = base.origin
        if self.keys is not None and self.keys.skr is not None:
            # Offline KSK: the SKR slot's RRsets as imported (their TTLs are those its RRSIGs cover).
            slot = ks.presigned
            for rdtype in KSK_SIGNED_TYPES:
                imported = slot.get(rdtype) if slot is not None else None
                apex.append(
                    Change(
                        origin, rdtype, dns.rdataset.from_rdata_list(imported.ttl, list(imported)) if imported else None
                    )
                )
            self.signer.set_presigned(slot.signatures() if slot is not None else {})
        else:
            apex.append(
                Change(origin, dns.rdatatype.DNSKEY, rdataset(dns.rdatatype.DNSKEY, (k.dnskey for k in ks.dnskeys)))
            )
            cds: list[dns.rdata.Rdata] = [k.cds(self.settings.cds_digest) for k in ks.cds]
            cdnskey: list[dns.rdata.Rdata] = [k.cdnskey() for k in ks.cds]
            if ks.cds_delete:
                cds, cdnskey = [DELETE_CDS], [DELETE_CDNSKEY]
            apex.append(Change(origin, dns.rdatatype.CDS, rdataset(dns.rdatatype.CDS, cds)))
            apex.append(Change(origin, dns.rdatatype.CDNSKEY, rdataset(dns.rdatatype.CDNSKEY, cdnskey)))
        if self.settings.denial == "nsec3":
            apex.append(
                Change(origin, dns.rdatatype.NSEC3PARAM, rdataset(dns.rdatatype.NSEC3PARAM, [nsec3param_rdata()]))
            )
        served = base.with_changes(apex, serial=base.serial)
        self.signer.set_keys(ks.zone_signers, ks.dnskey_signers)
        chain = Nsec3Chain(served) if self.settings.denial == "nsec3" else None
        denial = chain if chain is not None else CompactDenial(served)
        self.version = Version(served, SignedView(self.signer, denial), chain)

    def next_serial(self, serial: int | None = None) -> int:
        """The serial of the next version (after ``serial``, default the one served), by the serial policy."""
        return next_serial(self.base.serial if serial is None else serial, self.settings.serial_policy, self.clock())

    def _publish_update(self, base: Zone, changes: list[Change]) -> None:
        """Publish an update incrementally when the served version allows it: the served zone is the previous
        one with the same changes (its key records are unchanged) and the NSEC3 chain is updated for the
        changed names only, so a registration on a 50,000-name zone costs milliseconds, not a rebuild."""
        previous = self.version
        if base.touched is not None and self.signer is None:  # unsigned: the zone is the version
            self.base = base
            self._delta(base.serial, (base.touched | {base.origin}, frozenset()))
            self.version = Version(base)
            return
        if previous.view is None or base.touched is None:
            self._publish(base)
            return
        self.base = base
        served = previous.zone.with_changes(changes, serial=base.serial)
        if served.touched is None or served.cuts is not previous.zone.cuts:
            self._publish(base)
            return
        signatures = previous.view.signatures
        if previous.chain is not None:
            chain = previous.chain.updated(served, served.touched)
            self._delta(served.serial, (served.touched | {served.origin}, chain.changed or frozenset()))
            self.version = Version(served, SignedView(signatures, chain), chain)
        else:
            self._delta(served.serial, (served.touched | {served.origin}, frozenset()))
            self.version = Version(served, SignedView(signatures, CompactDenial(served)))

    def _delta(self, serial: int, delta: tuple[frozenset[dns.name.Name], frozenset[bytes]] | None) -> None:
        self._deltas.append((serial, delta))
        del self._deltas[:-DELTA_VERSIONS]

    # -- the parent side of a KSK roll -----------------------------------------------------------------------

    def parent_check_due(self) -> bool:
        """Whether to ask the parent's servers for our DS now: a key is in submission and parents are
        configured, and the last check is ``parent_check_interval`` ago."""
        now = self.clock()
        if not self.settings.parents or self.keys is None or now < self._next_parent_check:
            return False
        if not self.keys.submitted(now):
            return False
        self._next_parent_check = now + self.settings.parent_check_interval
        return True

    def confirm_ds(self, answers: list[dns.rrset.RRset | None]) -> bool:
        """Given each parent server's DS RRset for the zone (None: no usable answer), complete the KSK
        submission (``ds_seen``) when every one of them serves the DS of the key in submission."""
        waiting = self.keys.submitted() if self.keys is not None else []
        if not waiting or not answers or self.keys is None:
            return False
        key = self.keys.zone_key(waiting[0])
        if not all(ds is not None and any(key.matches_ds(rdata) for rdata in ds) for ds in answers):
            return False
        self.keys.ds_seen(self.timing_ttl())
        log.info("zone %s: every parent server serves the DS of key %d; KSK submission done", self.origin, key.tag)
        return True

    def ds_push_due(self) -> tuple[int, dns.update.UpdateMessage] | None:
        """The dynamic update to send the parent's primary (RFC 2136), once per key entering submission: the
        zone's DS RRset replaced by the DS of the keys it should hold (those of the CDS policy's ``double-ds``:
        the key in submission and the active ones, so the parent never lacks a DS for a key signing the DNSKEY
        RRset). Returns the key tag with it; until ``ds_pushed(tag)`` it is sent again every
        ``parent_check_interval``."""
        if self.settings.ds_push is None or self.keys is None:
            return None
        waiting = self.keys.submitted()
        now = self.clock()
        if not waiting or now < self._pushed.get(waiting[0].tag, 0.0):
            return None
        self._pushed[waiting[0].tag] = now + self.settings.parent_check_interval
        records = [r for r in self.keys.records() if r.role != "zsk" and r.published(self.clock())]
        wanted = [r for r in records if r.tag == waiting[0].tag or r.ds_current(self.clock())]
        update = dns.update.UpdateMessage(self.origin.parent())
        update.delete(self.origin, dns.rdatatype.DS)
        for record in wanted:
            ds = self.keys.zone_key(record).ds(self.settings.cds_digest)
            update.add(self.origin, self.keys.policy.parent_ds_ttl, ds)
        return waiting[0].tag, update

    def ds_pushed(self, tag: int) -> None:
        """The parent's primary accepted the DS of key ``tag``: no further pushes for it."""
        self._pushed[tag] = float("inf")

    def skr_remaining(self) -> float | None:
        """Offline KSK: seconds until the imported SKR's last signatures expire (0 without an SKR); None: not
        an offline-KSK zone."""
        if self.keys is None or self.keys.skr is None:
            return None
        end = self.keys.skr_end()
        return max(0.0, end - self.clock()) if end is not None else 0.0

    def check_skr(self) -> None:
        """Log (at most daily) when the imported SKR runs out within ``skr_warning``: the offline signer must sign
        the next KSR before then, or the DNSKEY RRset's signatures expire and the zone goes bogus."""
        remaining = self.skr_remaining()
        now = self.clock()
        if remaining is None or remaining >= self.settings.skr_warning or now < self._next_skr_warning:
            return
        self._next_skr_warning = now + 86400
        if remaining <= 0:
            log.error(
                "zone %s: offline KSK: no imported SKR signs the DNSKEY RRset now (ztdns keys import-skr)", self.origin
            )
        else:
            log.warning(
                "zone %s: offline KSK: the imported SKR runs out in %.1f days: generate, sign and import the next KSR",
                self.origin,
                remaining / 86400,
            )

    def refresh_keys(self) -> bool:
        """Re-read the key timeline; a change of published keys is a new zone version (new serial)."""
        if self.keys is None:
            return False
        keyset = self.keys.keyset()
        if self._keyset is not None and keyset.fingerprint() == self._keyset.fingerprint():
            return False
        self._keyset = keyset
        self._publish(self.base.with_changes([], self.next_serial()))
        self._save()
        return True

    def resign(self) -> bool:
        """When a signature handed out (to a secondary in a transfer, or in an answer) is due for refresh,
        publish a new version: the serial rises, secondaries are NOTIFYed and transfer fresh signatures long
        before the old ones expire (a secondary never re-signs). Signatures due within half the refresh
        interval are renewed in the same version."""
        if self.signer is None:
            return False
        now = self.clock()
        due = min(self.signer.earliest_refresh, self._resign_at)
        if now < due:
            if due != self._saved_resign_at:
                self._save()  # so that a restart knows when the signatures handed out need refreshing
            return False
        self.signer.resign(now + self.settings.validity.refresh / 2)
        self._resign_at = float("inf")
        self._publish(self.base.with_changes([], self.next_serial()))
        self._save()
        return True

    def follow(self, previous: int) -> None:
        """Serve a serial after ``previous``: a zone reloaded in place of a served one is a new version to
        secondaries even when its file kept the serial."""
        if not serial_gt(self.base.serial, previous):
            self._publish(self.base.with_changes([], serial=self.next_serial(previous)))
            self._save()

    def timing_ttl(self) -> int:
        """The TTL key rollovers wait for (RFC 7583 Iret): ``max_zone_ttl`` when configured, else the largest TTL
        of the zone's data now (never above ``max_zone_ttl``, which every input obeys)."""
        return self.settings.max_ttl if self.settings.max_ttl_explicit else self.base.max_ttl()

    def update(self, message: dns.update.UpdateMessage, identity: str | None) -> list[Change]:
        settings = self.settings
        new, changes = apply_update(message, self.base, identity, settings.grants, self.next_serial(), settings.max_ttl)
        if changes and identity is not None:
            self._check_quota(identity, changes)
        if changes:
            for change in changes:
                key = (change.name, change.rdtype)
                self._dynamic[key] = change.rdataset
                self._set_owner(key, identity, change.rdataset)
            self._publish_update(new, changes)
            self._append(changes)
        return changes

    def _set_owner(
        self, key: tuple[dns.name.Name, int], identity: str | None, rdataset: dns.rdataset.Rdataset | None
    ) -> None:
        previous = self._owners.pop(key, None)
        if previous is not None:
            records, size = self._footprints.pop(key)
            usage = self._usage[previous]
            usage[0] -= records
            usage[1] -= size
        if identity is not None and rdataset is not None:
            records, size = self._footprints[key] = _footprint(rdataset)
            self._owners[key] = identity
            usage = self._usage.setdefault(identity, [0, 0])
            usage[0] += records
            usage[1] += size

    def _check_quota(self, identity: str, changes: list[Change]) -> None:
        quota = self.settings.quota
        records, size = self._usage.get(identity, (0, 0))
        for change in changes:
            key = (change.name, change.rdtype)
            if self._owners.get(key) == identity:
                before = self._footprints[key]
                records, size = records - before[0], size - before[1]
            if change.rdataset is not None:
                after = _footprint(change.rdataset)
                records, size = records + after[0], size + after[1]
        if quota.records and records > quota.records:
            raise UpdateRefused(dns.rcode.REFUSED, f"{identity} would hold {records} records (quota {quota.records})")
        if quota.rdata_bytes and size > quota.rdata_bytes:
            raise UpdateRefused(
                dns.rcode.REFUSED, f"{identity} would hold {size} bytes of record data (quota {quota.rdata_bytes})"
            )

    def transfer_records(self, version: Version | None = None) -> Iterator[dns.rrset.RRset]:
        """The signed records of ``version`` (default the one served), signed as they are taken. A transfer
        taken to the end is remembered as what secondaries hold (the IXFR journal's next difference)."""
        version = version or self.version
        taken: Snapshot = {}
        for rrset, source in self._sourced(version):
            taken[(rrset.name, rrset.rdtype, rrset.covers)] = (source, rrset)
            yield rrset
        self._remember(version, taken)

    def _sourced(self, version: Version) -> Iterator[tuple[dns.rrset.RRset, object]]:
        return records_with_sources(version.zone, version.view, version.chain.rrsets() if version.chain else ())

    def _remember(self, version: Version, taken: Snapshot) -> None:
        serial = version.zone.serial
        last = self._snapshot
        if last is not None and not serial_gt(serial, last[0].zone.serial):
            return
        if last is not None:
            deleted, added = differences(last[1], taken)
            self._journal_entry(last[0], version, deleted, added)
        self._snapshot = (version, taken)

    def _journal_entry(
        self, since: Version, version: Version, deleted: list[dns.rrset.RRset], added: list[dns.rrset.RRset]
    ) -> None:
        entry = JournalEntry(
            since.zone.serial, since.zone.soa_rrset(), version.zone.serial, version.zone.soa_rrset(), deleted, added
        )
        self._journal.append(entry)
        del self._journal[:-JOURNAL_VERSIONS]

    def _changed_since(self, since: int, serial: int) -> tuple[set[dns.name.Name], set[bytes]] | None:
        """Owner names and NSEC3 hashes changed from version ``since`` to ``serial``; None when unknown (a
        version in between was built whole, or the versions are no longer recorded)."""
        names: set[dns.name.Name] = set()
        digests: set[bytes] = set()
        collecting = False
        for version_serial, delta in self._deltas:
            if collecting:
                if delta is None:
                    return None
                names.update(delta[0])
                digests.update(delta[1])
                if version_serial == serial:
                    return names, digests
            elif version_serial == since:
                collecting = True
        return None

    def _advance_snapshot(self, version: Version) -> bool:
        """Move the snapshot of what secondaries hold to ``version`` by comparing only what changed since it
        (the names and NSEC3 records the updates in between touched), journalling the difference: an IXFR after
        a registration costs a few RRsets, not a walk over the zone. False when that is not known."""
        if self._snapshot is None:
            return False
        held_version, held = self._snapshot
        changed = self._changed_since(held_version.zone.serial, version.zone.serial)
        if changed is None:
            return False
        names, digests = changed
        zone, old = version.zone, held_version.zone
        deleted: list[dns.rrset.RRset] = []
        added: list[dns.rrset.RRset] = []

        def compare(key: tuple[dns.name.Name, int, int], new: tuple[object, dns.rrset.RRset] | None) -> None:
            had = held.get(key)
            if (
                had is not None
                and new is not None
                and (had[0] is new[0] or (had[1] == new[1] and had[1].ttl == new[1].ttl))
            ):
                return
            if had is not None:
                del held[key]
                if key[1] != dns.rdatatype.SOA:  # the SOA frames the difference
                    deleted.append(had[1])
            if new is not None:
                held[key] = new
                if key[1] != dns.rdatatype.SOA:
                    added.append(new[1])

        for name in names:
            for rdtype in {*old.nodes.get(name, {}), *zone.nodes.get(name, {})}:
                rds = zone.get(name, rdtype)
                rrset = None
                if rds is not None:
                    rrset = (
                        zone.soa_rrset() if rdtype == dns.rdatatype.SOA and name == zone.origin else rrset_of(name, rds)
                    )
                compare((name, rdtype, 0), (rds, rrset) if rds is not None and rrset is not None else None)
                self._compare_signature(version, name, rdtype, rrset, compare)
        chain = version.chain
        for digest in digests if chain is not None else ():
            assert chain is not None
            owner = chain.owner(digest)
            record = chain.record(digest)
            compare((owner, dns.rdatatype.NSEC3, 0), (record, record) if record is not None else None)
            self._compare_signature(version, owner, dns.rdatatype.NSEC3, record, compare)
        self._journal_entry(held_version, version, deleted, added)
        self._snapshot = (version, held)
        return True

    @staticmethod
    def _compare_signature(
        version: Version,
        name: dns.name.Name,
        rdtype: int,
        rrset: dns.rrset.RRset | None,
        compare: Callable[[tuple[dns.name.Name, int, int], tuple[object, dns.rrset.RRset] | None], None],
    ) -> None:
        """Compare the RRSIG RRset covering (``name``, ``rdtype``) with what secondaries hold (as a transfer
        yields it: none for delegation NS and glue)."""
        sig = None
        if rrset is not None and version.view is not None and not unsigned_in_transfer(version.zone, rrset):
            sig = version.view.signatures.rrsig(rrset)
        compare((name, dns.rdatatype.RRSIG, rdtype), (sig, sig) if sig is not None else None)

    def ixfr_records(self, version: Version, since: int) -> list[dns.rrset.RRset] | None:
        """The RFC 1995 difference sequence from serial ``since`` to ``version`` (its closing SOA left to the
        caller), or None when the journal does not reach back to ``since`` (then a full transfer answers)."""
        current = self._snapshot is not None and self._snapshot[0].zone.serial == version.zone.serial
        if not current and not self._advance_snapshot(version):
            self._remember(version, snapshot(self._sourced(version)))
        start = next((i for i, entry in enumerate(self._journal) if entry.since == since), None)
        if start is None or self._journal[-1].serial != version.zone.serial:
            return None
        out = [version.zone.soa_rrset()]
        for entry in self._journal[start:]:
            out += [entry.since_soa, *entry.deleted, entry.soa, *entry.added]
        return out

    # -- persistence of dynamic data -------------------------------------------------------------------------

    def _fingerprint(self) -> list[list[int]]:
        return [list(keys) for keys in self._keyset.fingerprint()] if self._keyset is not None else []

    def _restore(self, base: Zone) -> tuple[Zone, bool]:
        """The zone with the dynamic records saved, and whether its content changed while we were stopped (zone
        source or published keys, or no state yet): then its serial is raised past the one served before."""
        path = self.settings.state_path
        if path is None or not path.exists():
            return base, True
        data = json.loads(path.read_text())
        for line in self._journal_lines():
            # Updates after the state was written whole, in order; a line cut short by a crash ends the journal.
            data["records"] += line["records"]
            self._appended += 1
            if serial_gt(line["serial"], data["serial"]):
                data["serial"], data["resign_at"] = line["serial"], line.get("resign_at")
        changes = []
        for entry in data["records"]:
            name = dns.name.from_text(entry["name"])
            rdtype = dns.rdatatype.from_text(entry["type"])
            rds = None
            if entry["rdata"] is not None:
                # Registered under a higher max_zone_ttl: served within today's.
                ttl = min(entry["ttl"], self.settings.max_ttl)
                rds = dns.rdataset.from_text_list(dns.rdataclass.IN, rdtype, ttl, entry["rdata"], origin=base.origin)
            self._set_owner((name, rdtype), entry.get("identity"), rds)
            self._dynamic[(name, rdtype)] = rds
            changes.append(Change(name, rdtype, rds))
        # Never go back: a restart keeps the serial secondaries have already seen.
        saved: int = data["serial"]
        serial = saved if serial_gt(saved, base.serial) else base.serial
        self._resign_at = self._saved_resign_at = data.get("resign_at") or float("inf")
        changed = data.get("source") != self.settings.source or data.get("keys") != self._fingerprint()
        if changed and serial == saved:
            serial = next_serial(saved, self.settings.serial_policy, self.clock())
        return base.with_changes(changes, serial=serial), changed

    def _records(self, keys: Iterable[tuple[dns.name.Name, int]]) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for name, rdtype in keys:
            rds = self._dynamic[(name, rdtype)]
            out.append(
                {
                    "name": name.to_text(),
                    "type": type_text(rdtype),
                    "ttl": rds.ttl if rds is not None else 0,
                    "rdata": [r.to_text() for r in rds] if rds is not None else None,
                    "identity": self._owners.get((name, rdtype)),
                }
            )
        return out

    def _resign_time(self) -> float | None:
        resign_at = min(self.signer.earliest_refresh, self._resign_at) if self.signer else float("inf")
        self._saved_resign_at = resign_at
        return resign_at if resign_at != float("inf") else None

    def _journal_path(self) -> Path | None:
        path = self.settings.state_path
        return path.with_suffix(".journal") if path is not None else None

    def _journal_lines(self) -> Iterator[dict[str, Any]]:
        path = self._journal_path()
        if path is None or not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                return

    def _append(self, changes: list[Change]) -> None:
        """Keep an update: one line appended to the state's journal (the whole state is rewritten once the
        journal has as many lines as there are dynamic RRsets, so a registration never writes them all)."""
        path = self._journal_path()
        if path is None:
            return
        if self._appended >= max(JOURNAL_LINES_MIN, len(self._dynamic)):
            self._save()
            return
        keys = list(dict.fromkeys((c.name, c.rdtype) for c in changes))
        line = {"serial": self.base.serial, "resign_at": self._resign_time(), "records": self._records(keys)}
        with path.open("a") as journal:
            journal.write(json.dumps(line) + "\n")
        self._appended += 1

    def _save(self) -> None:
        path = self.settings.state_path
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        state = {
            "serial": self.base.serial,
            "records": self._records(self._dynamic),
            "source": self.settings.source,
            "keys": self._fingerprint(),
            "resign_at": self._resign_time(),
        }
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)
        journal = self._journal_path()
        if journal is not None:
            journal.unlink(missing_ok=True)
        self._appended = 0


@dataclass(slots=True)
class Stats:
    """Rare events. Answered queries are counted in ``Authority.metrics`` (per-thread shards, no lost counts)."""

    updates: int = 0
    updates_refused: int = 0
    transfers: int = 0
    transfers_refused: int = 0
    rrl_dropped: int = 0
    rrl_slipped: int = 0


# The ``kind`` label of ztdns_queries for authoritative answers: made now, or replayed pre-rendered.
KIND_ANSWERED = Kind.AUTHORITATIVE.value
KIND_REPLAYED = "authoritative_replay"


class Authority:
    """All served zones; implements ``ztdns.transport.Handler`` (``fast`` and ``handle``) plus ``respond``.

    Answers to plain queries are kept as rendered, signed wire and replayed to the next identical question
    with the client's ID and name case spliced in (:mod:`ztdns.replay`), so a repeated question costs no
    dnspython work at all. Every zone change and key event swaps in an empty replay table.
    """

    def __init__(
        self,
        zones: Iterable[ServedZone],
        keyring: dict[dns.name.Name, dns.tsig.Key] | None = None,
        identities: dict[dns.name.Name, str] | None = None,
        rrl: RateLimiter | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        replay_limit: int = 100_000,
        nsid: bytes = b"",
    ) -> None:
        self.zones = {z.origin: z for z in zones}
        self.nsid = nsid  # RFC 5001: sent to clients that ask, empty: not at all
        self.cookies = ServerCookies()  # the resolver's (RFC 9018 layout, with a timestamp)
        self.keyring = keyring or {}
        self.identities = identities or {}
        self.rrl = rrl
        self.clock = clock
        self.stats = Stats()
        self.metrics = metrics or Metrics()
        self.replay_limit = replay_limit
        self._replays = Replays(replay_limit)
        self.on_change: Callable[[ServedZone], None] = lambda zone: None
        self.metrics.register(self)

    def collect(self) -> Iterator[Metric]:
        """Besides answered queries (``ztdns_queries`` with kind ``authoritative``/``authoritative_replay``, counted
        into the shared ``Metrics``): rare events, replays held, and per zone the serial and signatures made."""
        stats = self.stats
        for name, help_text in (
            ("updates", "Dynamic updates applied"),
            ("updates_refused", "Dynamic updates refused (zone unchanged)"),
            ("transfers", "Zone transfers served"),
            ("transfers_refused", "Zone transfers refused"),
            ("rrl_dropped", "UDP responses dropped by response rate limiting"),
            ("rrl_slipped", "UDP responses sent truncated by response rate limiting"),
        ):
            yield CounterMetricFamily(f"ztdns_authority_{name}", help_text, value=getattr(stats, name))
        yield GaugeMetricFamily(
            "ztdns_authority_replay_entries", "Pre-rendered authoritative answers held", value=self.replays()
        )
        serial = GaugeMetricFamily("ztdns_authority_zone_serial", "SOA serial served", labels=["zone"])
        signatures = CounterMetricFamily(
            "ztdns_authority_signatures", "RRSIGs made (cache misses and refreshes)", labels=["zone"]
        )
        skr = GaugeMetricFamily(
            "ztdns_authority_skr_remaining_seconds",
            "Offline KSK: seconds until the imported SKR's last DNSKEY signatures expire",
            labels=["zone"],
        )
        for origin, served in list(self.zones.items()):
            zone = origin.to_text()
            serial.add_metric([zone], served.zone.serial)
            if served.signer is not None:
                signatures.add_metric([zone], served.signer.signatures_made)
            remaining = served.skr_remaining()
            if remaining is not None:
                skr.add_metric([zone], remaining)
        yield from (serial, signatures, skr)

    def replace(
        self,
        zones: Iterable[ServedZone],
        keyring: dict[dns.name.Name, dns.tsig.Key],
        identities: dict[dns.name.Name, str],
        rrl: RateLimiter | None,
    ) -> None:
        """Serve a reloaded configuration. A zone passed as the object already served keeps its state; any
        other zone is a new version (secondaries are NOTIFYed). Replays are dropped: zones may have gone."""
        previous = self.zones
        self.keyring, self.identities, self.rrl = keyring, identities, rrl
        self.zones = {z.origin: z for z in zones}
        self._changed([zone for origin, zone in self.zones.items() if previous.get(origin) is not zone])

    def zone_for(self, name: dns.name.Name, rdtype: int = dns.rdatatype.A) -> ServedZone | None:
        if rdtype == dns.rdatatype.DS and name in self.zones and name != dns.name.root:
            # DS lives on the parent side of a cut: a child apex we also serve is answered from its parent.
            parent = self.zone_for(name.parent())
            if parent is not None:
                return parent
        while True:
            zone = self.zones.get(name)
            if zone is not None or name == dns.name.root:
                return zone
            name = name.parent()

    def tick(self) -> list[ServedZone]:
        """Advance key timelines (start due rollovers, publish/withdraw keys) and publish a new version of zones
        with signatures due for refresh; returns zones that changed."""
        changed = []
        for zone in self.zones.values():
            if zone.keys is not None:
                zone.keys.due(zone.timing_ttl())
                zone.check_skr()
            if zone.refresh_keys() | zone.resign():
                changed.append(zone)
        if changed:
            self._changed(changed)
        return changed

    def parent_answers(self, zone: ServedZone, answers: list[dns.rrset.RRset | None]) -> bool:
        """The parent servers' DS RRsets for ``zone`` (see ``ServedZone.confirm_ds``); a completed submission
        publishes the zone's new key set (CDS withdrawn) at once."""
        if not zone.confirm_ds(answers):
            return False
        if zone.refresh_keys():
            self._changed([zone])
        return True

    def _changed(self, zones: list[ServedZone]) -> None:
        # The zones have published their new versions already; a new table (not clear()) so that an answer
        # rendered from the old version on another thread lands in the discarded table, never in this one.
        self._replays = Replays(self.replay_limit)
        for zone in zones:
            self.on_change(zone)

    def replays(self) -> int:
        return self._replays.size()

    # -- Handler ---------------------------------------------------------------------------------------------

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Plain queries: replayed when possible, else answered here over UDP; UPDATE, NOTIFY etc. go to
        ``handle``, and over a stream everything not replayed goes to ``respond_all``.

        Runs on the UDP lane thread; returns ``b""`` for a UDP query it drops (RRL). Replays are the resolver's
        (:class:`ztdns.replay.Replays`), all under identity None.
        """
        started = time.perf_counter()
        replays = self._replays  # once: see _changed
        # A query with EDNS options we answer per client (cookie, NSID) is not replayed: the full path adds them.
        found = None if _has_options(wire) else replays.answer(None, wire, client.stream, time.monotonic())
        if found is not None:
            return self._replayed(wire, client, found[0], found[1], started)
        if len(wire) < 12 or wire[2] & 0x78:  # not opcode QUERY: UPDATE, NOTIFY, ...
            return None
        if client.stream:
            return None  # the transport calls respond_all: a transfer is several messages
        for response in self._respond(wire, client, replays, started):
            return response
        return b""  # UDP: dropped (RRL, a response sent to us); nothing to retry

    def _replayed(self, wire: bytes, client: ClientInfo, answer: bytes, replay: Replay, started: float) -> bytes | None:
        rcode = replay.answered.rcode
        if not client.stream and self.rrl is not None:
            verdict = self.rrl.check(client.address, self._replay_class(wire, replay))
            if verdict is not Verdict.SEND:
                return self._limited(wire, verdict) or b""
        self.metrics.count(client.transport.value, KIND_REPLAYED, rcode, time.perf_counter() - started)
        return answer

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Like ``respond``; a transfer longer than one message needs ``respond_all`` instead."""
        responses = self.respond(wire, client)
        return responses[0] if responses else None

    async def respond_all(self, wire: bytes, client: ClientInfo) -> Iterable[bytes]:
        """Every response message (:class:`~ztdns.transport.MultiResponseHandler`, for the TCP transport); a
        transfer is a generator making each message as the transport takes it."""
        return self._respond(wire, client, self._replays, time.perf_counter())

    def _replay_class(self, wire: bytes, replay: Replay) -> Hashable:
        rcode = replay.answered.rcode
        if rcode == "NOERROR":
            return replay.key  # (name, type, variant)
        if rcode == "NXDOMAIN":
            try:
                name = dns.name.from_wire(wire, 12)[0]
            except dns.exception.DNSException:
                return ERROR_CLASS
            served = self.zone_for(name)
            return ("nxdomain", served.origin if served is not None else None)
        return ERROR_CLASS

    def _limited(self, wire: bytes, verdict: Verdict) -> bytes | None:
        if verdict is Verdict.SLIP:
            self.stats.rrl_slipped += 1
            return _error(wire, dns.rcode.NOERROR, truncated=True)
        self.stats.rrl_dropped += 1
        return None

    # -- requests --------------------------------------------------------------------------------------------

    def respond(self, wire: bytes, client: ClientInfo) -> list[bytes]:
        """Response wires for one request (empty: drop silently). Never raises on bad input."""
        return list(self._respond(wire, client, self._replays, time.perf_counter()))

    def _respond(self, wire: bytes, client: ClientInfo, replays: Replays, started: float) -> Iterable[bytes]:
        try:
            query = dns.message.from_wire(wire, keyring=self.keyring)
        except dns.message.UnknownTSIGKey:
            return _wire_list(_tsig_error(wire, dns.rcode.BADKEY, self.clock()))
        except dns.tsig.BadTime:
            return _wire_list(_tsig_error(wire, dns.rcode.BADTIME, self.clock()))
        except (dns.tsig.BadSignature, dns.tsig.PeerError):
            return _wire_list(_tsig_error(wire, dns.rcode.BADSIG, self.clock()))
        except dns.exception.DNSException:
            return _wire_list(_error(wire, dns.rcode.FORMERR))
        if query.flags & dns.flags.QR:
            return []
        opcode = query.opcode()
        if opcode == dns.opcode.UPDATE:
            assert isinstance(query, dns.update.UpdateMessage)
            return [self._update(query, client)]
        if opcode != dns.opcode.QUERY or len(query.question) != 1:
            return (
                [_render(answer(query, None), client, query)[0]]
                if opcode == dns.opcode.QUERY
                else [_error(wire, dns.rcode.NOTIMP) or b""]
            )
        question = query.question[0]
        if question.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            return self._transfer(query, client)
        served = self.zone_for(question.name, question.rdtype)
        version = served.version if served is not None else None  # read once: another thread may publish
        response = answer(query, version.zone if version else None, version.view if version else None)
        per_client = self._edns_options(query, response, client)
        parsed = parse_query(wire)
        if not client.stream and self.rrl is not None and per_client is not _COOKIE_VALID:
            bucket = parsed.key if parsed is not None else (question.name.canonicalize(), question.rdtype)
            response_class = _response_class(response, bucket, served)
            verdict = self.rrl.check(client.address, response_class)
            if verdict is not Verdict.SEND:
                return _wire_list(self._limited(wire, verdict))
        rcode = dns.rcode.to_text(response.rcode())
        out, full = _render(response, client, query)
        compact_ok = query.ednsflags & EDNS_CO  # not in the replay key: answered per query
        if served is not None and not query.had_tsig and per_client is None and parsed is not None and not compact_ok:
            expires = time.monotonic() + RENDERED_SECONDS
            replays.put(None, Replay(parsed.key, full, expires, Answered(KIND_REPLAYED, rcode)))
        self.metrics.count(client.transport.value, KIND_ANSWERED, rcode, time.perf_counter() - started)
        return [out]

    def _edns_options(
        self, query: dns.message.Message, response: dns.message.Message, client: ClientInfo
    ) -> object | None:
        """Add the per-client EDNS options (RFC 7873 cookie, RFC 5001 NSID) the query asked for; returns None when
        there are none (the answer can be replayed to others), _COOKIE_VALID when the client showed a valid
        server cookie (not rate-limited by address), else _PER_CLIENT."""
        if query.edns < 0 or not query.options or response.edns < 0:
            return None
        added: list[dns.edns.Option] = []
        result: object | None = None
        now = self.clock()
        for option in query.options:
            if option.otype == dns.edns.OptionType.COOKIE and isinstance(option, dns.edns.CookieOption):
                if len(option.client) != 8:
                    continue
                result = result or _PER_CLIENT
                if option.server and self.cookies.valid(option.client, option.server, client.address, now):
                    result = _COOKIE_VALID
                added.append(
                    dns.edns.CookieOption(option.client, self.cookies.make(option.client, client.address, now))
                )
            elif option.otype == dns.edns.OptionType.NSID and self.nsid:
                result = result or _PER_CLIENT
                added.append(dns.edns.NSIDOption(self.nsid))
        if added:
            response.use_edns(response.edns, response.ednsflags, response.payload, options=[*response.options, *added])
        return result

    def _transfer(self, query: dns.message.Message, client: ClientInfo) -> Iterable[bytes]:
        served = self.zones.get(query.question[0].name)
        # A compact-denial zone has no denial chain to transfer: a secondary could not prove non-existence.
        compact = served is not None and served.signer is not None and served.settings.denial == "compact"
        if served is None or not client.stream or compact or not served.settings.transfer.allows(query, client.address):
            self.stats.transfers_refused += 1
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED if served is not None else dns.rcode.NOTAUTH)
            return [response.to_wire()]
        self.stats.transfers += 1
        version = served.version  # one version for the whole transfer, however long it streams
        if query.question[0].rdtype == dns.rdatatype.IXFR:
            since = _ixfr_serial(query)
            if since is not None and (since == version.zone.serial or serial_gt(since, version.zone.serial)):
                # RFC 1995 §2: the client has this version (or a newer one): the SOA alone says so.
                response = dns.message.make_response(query)
                response.flags |= dns.flags.AA
                response.answer.append(version.zone.soa_rrset())
                return [response.to_wire()]
            sequence = served.ixfr_records(version, since) if since is not None else None
            if sequence is not None:
                return axfr_messages(query, sequence, version.zone.soa_rrset())
        return axfr_messages(query, served.transfer_records(version), version.zone.soa_rrset())

    def _update(self, message: dns.update.UpdateMessage, client: ClientInfo) -> bytes:
        if message.had_tsig and message.keyname is not None:
            identity: str | None = self.identities.get(message.keyname, f"tsig:{message.keyname.to_text()}")
        else:
            # Registration authorises by the certificate's SPIFFE ID (URI SAN) only, never a DNS SAN or CN.
            identity = client.certificate_identity if is_spiffe_id(client.certificate_identity) else None
        response = dns.message.make_response(message)
        response.set_rcode(dns.rcode.Rcode.make(self.apply(message, identity)[0]))
        return response.to_wire()

    def apply(self, message: dns.update.UpdateMessage, identity: str | None) -> tuple[int, str]:
        """Apply an update as ``identity`` (UPDATE over DNS, or the HTTPS registration API): the rcode and,
        when refused, why. A refused update leaves the zone unchanged."""
        zone_rr = message.zone[0] if len(message.zone) == 1 else None
        served = self.zones.get(zone_rr.name) if zone_rr is not None and zone_rr.rdtype == dns.rdatatype.SOA else None
        if served is None:
            return dns.rcode.NOTAUTH, "not a zone served here"
        try:
            changes = served.update(message, identity)
        except UpdateRefused as refused:
            self.stats.updates_refused += 1
            # The rcode only: the reason names the updater and the names it asked for, which the client is told
            # and which leave the process only through observe/.
            log.info("update of %s refused: %s", served.origin, dns.rcode.to_text(dns.rcode.Rcode.make(refused.rcode)))
            return refused.rcode, str(refused)
        self.stats.updates += 1
        if changes:
            self._changed([served])
        return dns.rcode.NOERROR, ""


def _render(response: dns.message.Message, client: ClientInfo, query: dns.message.Message) -> tuple[bytes, bytes]:
    """(what to send, the full response). Over UDP a response larger than the client's limit is sent
    truncated (TC=1, no records); the full one is what later replays serve to clients it fits."""
    full = render(response, max_size=65535)
    limit = 65535 if client.stream else udp_limit(query.payload)
    if len(full) <= limit:
        return full, full
    response.answer, response.authority, response.additional = [], [], []
    response.flags |= dns.flags.TC
    return render(response, max_size=limit), full


def _error(wire: bytes, rcode: int, truncated: bool = False) -> bytes | None:
    """``rcode`` for a request we cannot or will not answer (the question echoed when truncated, so the client
    retries it over TCP); None for no header or a response: those are never answered."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    return error_response(wire, rcode, truncated=True) if truncated else header_only(wire, rcode)


ERROR_CLASS = ("error",)
_COOKIE_VALID = object()
_PER_CLIENT = object()


def _response_class(response: dns.message.Message, question: Hashable, served: ServedZone | None) -> Hashable:
    """The RRL bucket of a response besides the client prefix: answers and NODATA per question (the replay key:
    name, type and EDNS variant, so replays count in the same bucket), NXDOMAIN per zone, errors together."""
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR:
        return question
    if rcode == dns.rcode.NXDOMAIN:
        return ("nxdomain", served.origin if served is not None else None)
    return ERROR_CLASS


def _has_options(wire: bytes) -> bool:
    """Whether a query's OPT record carries options or the CO flag, which make its answer the client's own
    (cheap: the OPT record ends the message, so without options its RDLENGTH, the last two bytes, is zero and its
    flags are four bytes before the end)."""
    if len(wire) <= 23 or (wire[10] or wire[11]) == 0:
        return False
    return wire[-2:] != b"\0\0" or bool(wire[-4] & (EDNS_CO >> 8))


def _footprint(rdataset: dns.rdataset.Rdataset) -> tuple[int, int]:
    """What an RRset counts against a quota: records and bytes of record data."""
    return len(rdataset), sum(len(rdata.to_wire() or b"") for rdata in rdataset)


def check_ttls(zone: Zone, limit: int) -> None:
    """Raises ZoneError naming the first record whose TTL is above ``limit`` (max_zone_ttl)."""
    for name, node in zone.nodes.items():
        for rdtype, rds in node.items():
            if rds.ttl > limit:
                raise ZoneError(
                    f"zone {zone.origin}: {name} {type_text(rdtype)} has TTL {rds.ttl}, above max_zone_ttl {limit}"
                )


def _ixfr_serial(query: dns.message.Message) -> int | None:
    """The serial an IXFR client has (the SOA in its authority section)."""
    for rrset in query.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            have: int = rrset[0].serial
            return have
    return None


def _tsig_error(wire: bytes, error: int, now: float) -> bytes | None:
    """NOTAUTH with the TSIG record saying why (RFC 8945 §5.2): BADKEY, BADSIG (MAC empty, unsigned: we cannot
    or must not sign with that key) or BADTIME (our time in other data)."""
    try:
        query = dns.message.from_wire(wire, keyring=False)
    except dns.exception.DNSException:
        return _error(wire, dns.rcode.NOTAUTH)
    if query.flags & dns.flags.QR:
        return None
    if query.tsig is None or query.keyname is None:
        return _error(wire, dns.rcode.NOTAUTH)
    request = query.tsig[0]
    other = int(now).to_bytes(6, "big") if error == dns.rcode.BADTIME else b""
    tsig = dns.rdtypes.ANY.TSIG.TSIG(
        dns.rdataclass.ANY,
        dns.rdatatype.TSIG,
        request.algorithm,
        request.time_signed,
        request.fudge,
        b"",
        request.original_id,
        error,
        other,
    )
    response = dns.message.make_response(dns.message.from_wire(_unsigned(wire, query), keyring=False))
    response.set_rcode(dns.rcode.NOTAUTH)
    answer = bytearray(response.to_wire())
    answer[10:12] = (int.from_bytes(answer[10:12], "big") + 1).to_bytes(2, "big")  # ARCOUNT: the TSIG record
    rdata = tsig.to_wire() or b""
    answer += query.keyname.to_wire() or b""
    answer += struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata
    return bytes(answer)


def _unsigned(wire: bytes, query: dns.message.Message) -> bytes:
    """``wire`` without its TSIG record (the last one of the additional section)."""
    assert query.tsig is not None and query.keyname is not None
    end = len(wire)
    tsig_len = len(query.keyname.to_wire() or b"") + 10 + len(query.tsig[0].to_wire() or b"")
    head = bytearray(wire[: end - tsig_len])
    head[10:12] = (int.from_bytes(head[10:12], "big") - 1).to_bytes(2, "big")
    return bytes(head)


def _wire_list(wire: bytes | None) -> list[bytes]:
    return [wire] if wire is not None else []
