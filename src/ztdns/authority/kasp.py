"""Key and signing policy (KASP) per zone: which keys exist, when each is published, signs, and goes away.

Every rollover computes its timestamps when it starts (RFC 7583 intervals from TTLs and propagation delays)
and writes them to a JSON state file, so the state at any instant is a pure function of the file and the
clock: a restart mid-rollover resumes exactly, and tests drive it with an accelerated clock. The only step
that needs the outside world is the KSK's DS swap at the parent, confirmed with ``ds_seen``: by ``ztdns keys
ds-seen ZONE``, or by DS polling of the parent's servers (``ServedZone.confirm_ds``).

Timeline of a ZSK pre-publish rollover (RFC 7583 §3.2.1), new key N, old key O::

    N.publish = now                  N in the DNSKEY RRset
    N.active  = now + Ipub           Ipub = Dprp + TTL(DNSKEY); N signs, O stops signing (O.retire)
    O.remove  = O.retire + Iret      Iret = Dprp + max TTL of signed data; O leaves the DNSKEY RRset

Timeline of a KSK double-signature rollover (RFC 7583 §3.3.1, "Double-KSK")::

    N.publish = now                  N in the DNSKEY RRset and signing it, beside O
    N.ready   = now + Ipub           CDS/CDNSKEY for N published (RFC 7344): the parent may swap the DS
    ds_seen                          the parent serves N's DS (operator or automation confirms); CDS withdrawn
    O.remove  = ds_seen + DprpP + TTL(DS)   old DS gone from caches; O leaves the DNSKEY RRset

Timeline of an algorithm rollover (RFC 6781 §4.1.4, double signature, "conservative"), old keys of algorithm A,
new keys of algorithm B (KSK+ZSK, or one CSK)::

    new ZSK.active = now             every RRset also signed with B (the DNSKEY RRset still holds only A keys)
    new keys.publish = t1 = now + Dprp + max TTL     B signatures are in every cache: B keys join DNSKEY
    new KSK.ready = t1 + Ipub        CDS/CDNSKEY of B: the parent may swap the DS
    ds_seen                          the parent serves B's DS
    A keys.remove = t3 = ds_seen + DprpP + TTL(DS)   A leaves the DNSKEY RRset
    A ZSK.retire = t3 + Dprp + TTL(DNSKEY)           the DNSKEY RRset without A is in every cache: A
                                                     signatures go

It starts when the zone's configured ``algorithm`` differs from its keys' and the zone allows it
(``algorithm_rollover``); a zone that does not is refused (RFC 4035 §2.2: switching keys at once makes an
invalid zone).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import dns.name

from ztdns.authority.keys import ECDSAP256SHA256, FileKey, KeyStoreError, PrivateKey, ZoneKey
from ztdns.authority.offline import SKR, SkrStore, Slot, in_force, parse, request, verify

Role = Literal["ksk", "zsk", "csk"]
# Which keys the CDS/CDNSKEY RRsets (RFC 7344) are published for, as Knot's ``cds-cdnskey-publish``: never;
# a KSK in its submission phase (ready, DS not yet seen); that one, else the active KSK(s); the submitted and the
# active ones together; or the RFC 8078 "delete" records asking the parent to remove the DS (going insecure).
CdsPublish = Literal["none", "rollover", "always", "double-ds", "delete-dnssec"]
Clock = Callable[[], float]
FOREVER = float("inf")


def when_text(t: float) -> str:
    """A timestamp as people read it (UTC, ISO 8601)."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Policy:
    algorithm: int = ECDSAP256SHA256
    csk: bool = False
    dnskey_ttl: int = 3600
    propagation_delay: int = 300  # Dprp: time for a change to reach every secondary
    parent_propagation_delay: int = 3600  # Dreg + DprpP: parent registration and publication
    parent_ds_ttl: int = 86400
    zsk_lifetime: int = 90 * 86400  # 0: roll only on command
    ksk_lifetime: int = 0
    # A change of ``algorithm`` rolls the keys by double signature; False: such a change is refused.
    algorithm_rollover: bool = False
    # Seconds after a key has left the zone (removed, and no longer signing) before it is purged: its state
    # entry dropped and the key destroyed (file deleted, token objects destroyed). None: kept forever.
    purge_delay: int | None = None
    cds_publish: CdsPublish = "rollover"
    # The KSK is offline (Knot's offline-ksk): the zone holds ZSKs only, rolled by the plan a KSR is made from,
    # and serves the DNSKEY/CDS/CDNSKEY RRsets and signatures of an imported SKR (ztdns.authority.offline).
    offline_ksk: bool = False


@dataclass(slots=True)
class KeyRecord:
    tag: int
    role: Role
    algorithm: int
    locator: str  # file name in the key directory, or "pkcs11:<CKA_ID in hex>"
    created: float
    publish: float
    active: float | None = None  # starts signing zone data (zsk, csk)
    retire: float | None = None  # stops signing zone data
    ready: float | None = None  # DNSKEY propagated: CDS may be published (ksk, csk)
    ds_seen: float | None = None  # parent serves our DS
    remove: float | None = None  # leaves the DNSKEY RRset

    def published(self, t: float) -> bool:
        return self.publish <= t < (self.remove if self.remove is not None else FOREVER)

    def signs_data(self, t: float) -> bool:
        # Not tied to publication: in an algorithm rollover a key signs before its DNSKEY is published and after
        # it is withdrawn (RFC 6781 §4.1.4); in other rollovers active/retire lie within publication anyway.
        if self.role == "ksk" or self.active is None:
            return False
        return self.active <= t < (self.retire if self.retire is not None else FOREVER)

    def signs_dnskey(self, t: float) -> bool:
        return self.role != "zsk" and self.published(t)

    def in_cds(self, t: float) -> bool:
        """In its submission phase: ready for the parent, which does not serve its DS yet."""
        return self.role != "zsk" and self.ready is not None and self.ready <= t and self.ds_seen is None

    def ds_current(self, t: float) -> bool:
        """The parent serves its DS and it stays: the active KSK (or CSK)."""
        return self.role != "zsk" and self.published(t) and self.ds_seen is not None and self.remove is None

    def state(self, t: float) -> str:
        if t < self.publish:
            return "scheduled"
        if self.remove is not None and t >= self.remove:
            return "removed"
        if self.signs_data(t) or (self.role == "ksk" and self.ds_seen is not None):
            return "active"
        if self.role != "zsk" and self.ds_seen is None:
            return "ds-submitted" if self.in_cds(t) else "published"
        if self.retire is not None and t >= self.retire:
            return "retired"
        return "published"


@dataclass(frozen=True, slots=True)
class KeySet:
    """Keys in use at one instant: what the DNSKEY/CDS RRsets hold and which keys sign what."""

    dnskeys: tuple[ZoneKey, ...]
    zone_signers: tuple[ZoneKey, ...]
    dnskey_signers: tuple[ZoneKey, ...]
    cds: tuple[ZoneKey, ...]
    cds_delete: bool = False  # publish the RFC 8078 delete CDS/CDNSKEY instead
    # Offline KSK: the imported SKR slot in force, whose DNSKEY/CDS/CDNSKEY RRsets and RRSIGs are served as they
    # are (``dnskeys``, ``dnskey_signers`` and ``cds`` are then empty).
    presigned: Slot | None = None

    def fingerprint(self) -> tuple[tuple[int, ...], ...]:
        keys = (self.dnskeys, self.zone_signers, self.dnskey_signers, self.cds)
        fingerprint = tuple(tuple(k.tag for k in group) for group in keys) + (((0,),) if self.cds_delete else ())
        return fingerprint + (((self.presigned.start,),) if self.presigned is not None else ())


@dataclass(slots=True)
class _State:
    keys: list[KeyRecord] = field(default_factory=list)


class KeyStore(Protocol):
    """Where private keys live: files (:class:`FileStore`, the default) or a PKCS#11 token
    (:class:`ztdns.authority.pkcs11.Pkcs11Store`)."""

    def create(self, zone: dns.name.Name, algorithm: int, sep: bool) -> tuple[str, ZoneKey]:
        """A new key; returns the locator to record in the key state, and the key."""

    def load(self, zone: dns.name.Name, locator: str, sep: bool, algorithm: int) -> ZoneKey:
        """The key at ``locator``; a missing key raises KeyStoreError (never regenerated)."""

    def delete(self, locator: str) -> None:
        """Destroy the key at ``locator`` (a purged key); a key already gone is not an error."""


class FileStore:
    """Private keys as PKCS#8 PEM files (0600) in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self, zone: dns.name.Name, algorithm: int, sep: bool) -> tuple[str, ZoneKey]:
        while True:
            private = FileKey.generate(algorithm)
            key = ZoneKey.make(zone, private, sep)
            locator = f"K{zone.to_text()}+{algorithm:03d}+{key.tag:05d}.pem"
            path = self.directory / locator
            if not path.exists():  # a key-tag collision with an existing key: draw again
                private.save(path)
                return locator, key

    def load(self, zone: dns.name.Name, locator: str, sep: bool, algorithm: int) -> ZoneKey:
        if locator.startswith("pkcs11:"):
            raise KeyStoreError(f"key {locator} is in a PKCS#11 token but the key store is files")
        private: PrivateKey = FileKey.load(self.directory / locator)
        if private.algorithm != algorithm:
            raise KeyStoreError(f"key file {locator} holds algorithm {private.algorithm}, expected {algorithm}")
        return ZoneKey.make(zone, private, sep)

    def delete(self, locator: str) -> None:
        (self.directory / locator).unlink(missing_ok=True)


class KeyManager:
    """The keys of one zone under a :class:`Policy`, persisted in ``<state_dir>/<zone>.keys.json``."""

    def __init__(
        self,
        zone: dns.name.Name,
        policy: Policy,
        state_dir: Path,
        store: KeyStore | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.zone = zone
        self.policy = policy
        self.clock = clock
        stem = zone.to_text(omit_final_dot=True) or "root"
        self.path = state_dir / f"{stem}.keys.json"
        self.store = store or FileStore(state_dir / "keys")
        self.skr = SkrStore(state_dir / f"{stem}.skr", zone) if policy.offline_ksk else None
        self._state = _State()
        self._mtime: float | None = None
        self._loaded: dict[int, ZoneKey] = {}
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- persistence -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_State]:
        """Read-modify-write under an exclusive lock, so the CLI and a running server never lose each other's
        edits."""
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._read()
            yield self._state
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"zone": self.zone.to_text(), "keys": [asdict(k) for k in self._state.keys]}, indent=1)
            )
            os.chmod(tmp, 0o600)
            tmp.replace(self.path)
            self._mtime = self.path.stat().st_mtime_ns

    def _read(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if stat.st_mtime_ns == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
            keys = [KeyRecord(**entry) for entry in data["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{self.path}: unreadable key state: {exc}") from None
        self._state = _State(keys)
        self._mtime = stat.st_mtime_ns

    def records(self) -> list[KeyRecord]:
        self._read()
        return [replace(k) for k in self._state.keys]

    # -- keys ------------------------------------------------------------------------------------------------

    def _new_key(self, state: _State, role: Role, now: float, algorithm: int | None = None) -> KeyRecord:
        algorithm = self.policy.algorithm if algorithm is None else algorithm
        locator, key = self.store.create(self.zone, algorithm, sep=role != "zsk")
        self._loaded[key.tag] = key
        record = KeyRecord(key.tag, role, algorithm, locator, created=now, publish=now)
        state.keys.append(record)
        return record

    @staticmethod
    def _algorithm(state: _State) -> int | None:
        """The algorithm the zone's keys have (the oldest key still published, or signing, decides)."""
        for record in state.keys:
            if record.remove is None:
                return record.algorithm
        return None

    def algorithm_change(self) -> str | None:
        """Why the configured algorithm cannot be used as it is (a change without ``algorithm_rollover``), or
        None. Read-only: ``ztdns check`` calls it."""
        self._read()
        current = self._algorithm(self._state)
        if current is None or current == self.policy.algorithm or self.policy.algorithm_rollover:
            return None
        return (
            f"zone {self.zone} has keys of algorithm {current} and is configured for {self.policy.algorithm}: "
            "switching keys at once makes the zone invalid (RFC 4035 §2.2); set algorithm_rollover = true to "
            "roll by double signature (RFC 6781 §4.1.4)"
        )

    def ensure_keys(self) -> None:
        """First signing of a zone: make a KSK+ZSK (or a CSK) valid at once; its DS goes to the parent by
        hand. Raises KeyStoreError for an algorithm change the zone does not allow to roll."""
        reason = self.algorithm_change()
        if reason is not None:
            raise KeyStoreError(reason)
        # Offline KSK: whole seconds, as KSR slots start on them.
        now = math.floor(self.clock()) if self.policy.offline_ksk else self.clock()
        with self._locked() as state:
            if state.keys:
                return
            roles: list[Role] = ["zsk"] if self.policy.offline_ksk else ["csk"] if self.policy.csk else ["ksk", "zsk"]
            for role in roles:
                record = self._new_key(state, role, now)
                record.active = now if role != "ksk" else None
                record.ready = record.ds_seen = now if role != "zsk" else None

    def zone_key(self, record: KeyRecord) -> ZoneKey:
        key = self._loaded.get(record.tag)
        if key is None:
            key = self.store.load(self.zone, record.locator, sep=record.role != "zsk", algorithm=record.algorithm)
            self._loaded[record.tag] = key
        return key

    def submitted(self, t: float | None = None) -> list[KeyRecord]:
        """Keys in their submission phase (ready, the parent's DS not yet seen): what DS polling looks for."""
        t = self.clock() if t is None else t
        self._read()
        return [replace(r) for r in self._state.keys if r.published(t) and r.in_cds(t)]

    def keyset(self, t: float | None = None) -> KeySet:
        t = self.clock() if t is None else t
        self._read()
        records = self._state.keys

        def pick(test: Callable[[KeyRecord], bool]) -> tuple[ZoneKey, ...]:
            return tuple(self.zone_key(r) for r in records if test(r))

        if self.skr is not None:
            slot = in_force(self.skr.slots(), t)
            return KeySet(
                dnskeys=(), zone_signers=pick(lambda r: r.signs_data(t)), dnskey_signers=(), cds=(), presigned=slot
            )
        mode = self.policy.cds_publish
        submitted = pick(lambda r: r.published(t) and r.in_cds(t))
        if mode in ("none", "delete-dnssec"):
            cds: tuple[ZoneKey, ...] = ()
        elif mode == "rollover":
            cds = submitted
        else:
            current = pick(lambda r: r.ds_current(t))
            cds = (submitted or current) if mode == "always" else submitted + current
        return KeySet(
            dnskeys=pick(lambda r: r.published(t)),
            zone_signers=pick(lambda r: r.signs_data(t)),
            dnskey_signers=pick(lambda r: r.signs_dnskey(t)),
            cds=cds,
            cds_delete=mode == "delete-dnssec",
        )

    # -- rollovers -------------------------------------------------------------------------------------------

    def _rolling(self, state: _State, role: Role, now: float) -> bool:
        for record in state.keys:
            if record.role != role or (record.remove is not None and record.remove <= now):
                continue
            if record.publish > now or (record.active is not None and record.active > now):
                return True
            if record.remove is not None or (role != "zsk" and record.ds_seen is None):
                return True
        return False

    def rollover(self, role: Role, max_ttl: int) -> KeyRecord:
        """Start a rollover of ``role`` now; ``max_ttl`` is the largest TTL of signed data in the zone."""
        if self.policy.offline_ksk:
            raise KeyStoreError(
                f"zone {self.zone} has an offline KSK: ZSK rolls follow the plan a KSR is made from (ztdns keys "
                "generate-ksr), KSK rolls are the offline signer's"
            )
        if (role == "csk") != self.policy.csk:
            raise KeyStoreError(f"zone {self.zone} uses {'a CSK' if self.policy.csk else 'a KSK and a ZSK'}")
        now = self.clock()
        policy = self.policy
        publish_interval = policy.propagation_delay + policy.dnskey_ttl
        with self._locked() as state:
            if self._rolling(state, role, now):
                raise KeyStoreError(f"a {role} rollover of {self.zone} is already in progress")
            old = [r for r in state.keys if r.role == role and r.remove is None]
            # A key rollover keeps the algorithm; changing it is the algorithm rollover's.
            new = self._new_key(state, role, now, self._algorithm(state))
            if role != "ksk":
                new.active = now + publish_interval
                for record in old:
                    record.retire = new.active
                    if role == "zsk":
                        record.remove = new.active + policy.propagation_delay + max_ttl
            if role != "zsk":
                new.ready = now + publish_interval
            return replace(new)

    def ds_seen(self, max_ttl: int) -> KeyRecord:
        """The parent now serves the DS of the key whose CDS we publish: withdraw CDS, schedule the old key's
        end."""
        now = self.clock()
        policy = self.policy
        with self._locked() as state:
            waiting = [r for r in state.keys if r.role != "zsk" and r.ds_seen is None and r.remove is None]
            if not waiting:
                raise KeyStoreError(f"zone {self.zone} has no key waiting for its DS")
            new = waiting[0]
            if new.ready is None or new.ready > now:
                ready = "an unknown time" if new.ready is None else when_text(new.ready)
                raise KeyStoreError(f"key {new.tag} of {self.zone} is not ready before {ready}: CDS not yet published")
            new.ds_seen = now
            t3 = now + policy.parent_propagation_delay + policy.parent_ds_ttl
            for record in state.keys:
                if record.algorithm != new.algorithm and record.remove is None:
                    # Algorithm rollover: the old algorithm's keys leave the DNSKEY RRset at t3 and their
                    # signatures once that RRset has left every cache.
                    record.remove = t3
                    if record.role != "ksk":
                        record.retire = t3 + policy.propagation_delay + policy.dnskey_ttl
                    continue
                if record is new or record.role != new.role or record.remove is not None:
                    continue
                record.remove = now + policy.parent_propagation_delay + policy.parent_ds_ttl
                if record.role == "csk" and record.retire is not None:
                    record.remove = max(record.remove, record.retire + policy.propagation_delay + max_ttl)
            return replace(new)

    def algorithm_rollover(self, max_ttl: int) -> list[KeyRecord]:
        """Start the rollover to the configured algorithm now (timeline in the module docstring)."""
        now = self.clock()
        policy = self.policy
        with self._locked() as state:
            current = self._algorithm(state)
            if current is None or current == policy.algorithm:
                raise KeyStoreError(f"zone {self.zone} already uses algorithm {policy.algorithm}")
            if any(r.algorithm == policy.algorithm for r in state.keys if r.remove is None):
                raise KeyStoreError(f"an algorithm rollover of {self.zone} is already in progress")
            if any(self._rolling(state, role, now) for role in ("ksk", "zsk", "csk")):
                raise KeyStoreError(f"a key rollover of {self.zone} is in progress; the algorithm rolls after it")
            published = now + policy.propagation_delay + max_ttl
            started = []
            for role in ("csk",) if policy.csk else ("ksk", "zsk"):
                record = self._new_key(state, role, now)  # type: ignore[arg-type]
                record.publish = published
                if role != "ksk":
                    record.active = now
                if role != "zsk":
                    record.ready = published + policy.propagation_delay + policy.dnskey_ttl
                started.append(replace(record))
            return started

    # -- offline KSK ---------------------------------------------------------------------------------------------

    def plan_zsks(self, until: float, max_ttl: int) -> list[KeyRecord]:
        """Offline KSK: schedule the ZSK rollovers due up to ``until`` now (Knot's pre-generate), each timed as
        :meth:`rollover` would when its key's lifetime runs out, so a KSR can list every future ZSK."""
        lifetime = self.policy.zsk_lifetime
        policy = self.policy
        made: list[KeyRecord] = []
        if not lifetime:
            return made
        with self._locked() as state:
            while True:
                current = [r for r in state.keys if r.role == "zsk" and r.remove is None]
                if not current:
                    return made
                # Whole seconds: KSR slots start on them.
                start = math.ceil(max(max(r.publish for r in current) + lifetime, self.clock()))
                if start > until:
                    return made
                new = self._new_key(state, "zsk", start, self._algorithm(state))
                new.active = start + policy.propagation_delay + policy.dnskey_ttl
                for record in current:
                    record.retire = new.active
                    record.remove = new.active + policy.propagation_delay + max_ttl
                made.append(replace(new))

    def published_zsks(self, t: float) -> list[ZoneKey]:
        """The ZSKs in the DNSKEY RRset at ``t`` by the key state (what a KSR slot lists)."""
        self._read()
        return [self.zone_key(r) for r in self._state.keys if r.role == "zsk" and r.published(t)]

    def zsk_events(self) -> list[int]:
        """When the published ZSK set changes."""
        self._read()
        times = [t for r in self._state.keys if r.role == "zsk" for t in (r.publish, r.remove) if t is not None]
        return sorted({math.ceil(t) for t in times})

    def generate_ksr(self, start: int, end: int, max_ttl: int) -> str:
        """The KSR text for ``start``..``end`` (Knot's ``keymgr generate-ksr``): the ZSK rolls due by ``end`` are
        scheduled first, then every change of the published ZSKs is a slot."""
        if self.skr is None:
            raise KeyStoreError(f"zone {self.zone} does not have offline_ksk = true")
        if end < start:
            raise KeyStoreError("a KSR's end is before its start")
        self.plan_zsks(end, max_ttl)
        times = [start, *(t for t in self.zsk_events() if start < t <= end), end]
        return request(self.zone, self.published_zsks, times, self.policy.dnskey_ttl)

    def import_skr(self, text: str, source: str) -> list[Slot]:
        """Verify an SKR (Knot's ``keymgr import-skr``) and keep it; returns the slots now stored. Refused
        (OfflineKskError naming ``source``): signatures that do not verify, ZSKs other than the key state's."""
        if self.skr is None:
            raise KeyStoreError(f"zone {self.zone} does not have offline_ksk = true")
        slots = parse(text, SKR, self.zone, source)
        verify(slots, self.zone, lambda t: [k.dnskey for k in self.published_zsks(t)], self.zsk_events(), source)
        return self.skr.save(slots)

    def skr_end(self) -> float | None:
        """Offline KSK: when the signatures of the last imported SKR slot expire (None: no SKR)."""
        if self.skr is None:
            return None
        slots = self.skr.slots()
        return slots[-1].expiration() if slots else None

    def purge(self) -> list[KeyRecord]:
        """Destroy keys that left the zone ``purge_delay`` ago (never a key still published or signing)."""
        delay = self.policy.purge_delay
        if delay is None:
            return []
        now = self.clock()
        self._read()
        if not any(self._purgeable(r, now - delay) for r in self._state.keys):
            return []
        with self._locked() as state:
            gone = [r for r in state.keys if self._purgeable(r, now - delay)]
            for record in gone:
                self.store.delete(record.locator)
                self._loaded.pop(record.tag, None)
            state.keys = [r for r in state.keys if r not in gone]
            return gone

    @staticmethod
    def _purgeable(record: KeyRecord, before: float) -> bool:
        return (
            record.remove is not None
            and record.remove <= before
            and (record.active is None or (record.retire is not None and record.retire <= before))
        )

    def due(self, max_ttl: int) -> list[KeyRecord]:
        """Start the rollovers whose key lifetime has run out, and an allowed algorithm rollover; purge keys
        long gone; returns the new keys."""
        self.purge()
        now = self.clock()
        started = []
        self._read()
        algorithm = self._algorithm(self._state)
        if (
            self.policy.algorithm_rollover
            and algorithm is not None
            and algorithm != self.policy.algorithm
            and not any(r.algorithm == self.policy.algorithm for r in self._state.keys if r.remove is None)
            and not any(self._rolling(self._state, role, now) for role in ("ksk", "zsk", "csk"))
        ):
            return self.algorithm_rollover(max_ttl)
        for role, lifetime in (("zsk", self.policy.zsk_lifetime), ("ksk", self.policy.ksk_lifetime)):
            if self.policy.offline_ksk:
                break  # rolls are planned ahead, when a KSR is made (plan_zsks)
            role_: Role = "csk" if self.policy.csk else role  # type: ignore[assignment]
            if not lifetime or (self.policy.csk and role == "ksk"):
                continue
            current = [r for r in self._state.keys if r.role == role_ and r.remove is None]
            if (
                current
                and not self._rolling(self._state, role_, now)
                and min(r.publish for r in current) + lifetime <= now
            ):
                started.append(self.rollover(role_, max_ttl))
        return started
