"""The running agent: wires the table, the stub, the set writer, persistence, audit records and metrics.

Start order matters: the table (with restored grants) is committed before the stub listens, so no answer can
be released before enforcement is in place; resolv.conf is pointed at the stub only once it listens. After a
restart that finds the kernel's table exactly as the last run loaded it (``table.json``), the table and its set
elements — the grants — are kept, the stub listens at once and the journal is read back between answers. Stop
order: stop listening, snapshot; the table is left in force (only ``uninstall`` removes it).

While running, the agent watches its table: every 50 ms it reads the ruleset generation and, when someone else has
committed anything, compares the table's definition with the one it loaded. If someone deleted or altered it (``nft
flush ruleset``, a rule inserted or removed, the chain policy changed), it is rebuilt at once with every live grant
— logged, counted (``ztdns_agent_table_restored_total``) and shown by ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ztdns.agent import hostdns, lock
from ztdns.agent.allowstate import AllowState, Grant, SetUpdate
from ztdns.agent.asker import Asker, Attribution
from ztdns.agent.audit import AUDIT_LOG, AuditRecorder, BlockedRecorder
from ztdns.agent.cutoff import Cutoff
from ztdns.agent.flows import LiveDestinations
from ztdns.agent.links import egress_devices
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.nflog import NflogSocket
from ztdns.agent.nfnetlink import ElementWriter, TableWatch, updates_timeouts_in_place
from ztdns.agent.nft import Nft, NftError
from ztdns.agent.persist import GrantStore
from ztdns.agent.ruleset import TABLE, build_ruleset, set_names
from ztdns.agent.setwriter import SetWriter, packed_sets
from ztdns.agent.stub import ClientFilter, Peer, StubHandler, StubListeners, Upstream
from ztdns.agent.upstream import Upstreams
from ztdns.agent.workloads import WorkloadMap
from ztdns.config.agent import AgentConfig
from ztdns.config.base import parse_hostport

log = logging.getLogger("ztdns.agent")

STATUS = "status.json"
ASKED = "asked.json"  # recent (process, address) → name, for `flows`
TABLE_STATE = "table.json"  # what the kernel's table was built from: kept across a restart when it matches
_RESTORE_CHUNK = 2048  # grants read back per event-loop turn after a restart that kept the table (≈ 2 ms)
_TICK = 1.0  # seconds between status writes (and young-generation collections)
_WATCH = 0.05  # seconds between checks of the table: the longest a deleted table leaves egress open
_EXPIRY_STEP, _EXPIRY_LIMIT = 0.01, 256  # forget at most 256 expired grants every 10 ms (≈ 0.3 ms of work)
_EXPIRY_LEAD = 0.5  # seconds before its expiry a grant is forgotten and its address deleted from the kernel
_COMPACTION_CHUNK = 256  # grants written to the next snapshot per event-loop turn


class Agent:
    def __init__(self, config: AgentConfig, upstream: Upstream | None = None) -> None:
        """``upstream`` replaces the configured servers (the latency bench answers from memory)."""
        self.config = config
        self.nft = Nft()
        self.elements = ElementWriter(TABLE)
        self.metrics = AgentMetrics()
        self.live = LiveDestinations()
        self.state = AllowState(config.allow, config.identity, self.live)
        self.store = GrantStore(config.state_path)
        self.upstreams = Upstreams(config)
        self.writer = SetWriter(self.elements, self._committed, self._not_committed)
        self.errors: deque[tuple[float, str]] = deque(maxlen=10)
        self.attribution = _attribution()
        # The host first, then one scope per configured workload: its own identity, connections, state and sets.
        self.scopes = [Scope(config.identity, self.state, self.writer, self.upstreams)]
        for workload in config.workload:
            certificate = (config.path(workload.client_cert), config.path(workload.client_key))
            self.scopes.append(
                Scope(
                    workload.identity,
                    AllowState(config.allow, workload.identity, self.live),
                    SetWriter(self.elements, self._committed, self._not_committed, set_names(workload.name)),
                    Upstreams(config, certificate),
                )
            )
        self.workloads = WorkloadMap(config.workload)
        self._unknown_cgroups: dict[int, float] = {}  # cgroup ID → when it was last looked for in the workloads
        self.blocked = BlockedRecorder(config.state_path / AUDIT_LOG)
        self.handler = StubHandler(
            upstream or self.upstreams,
            self.state,
            self.writer,
            self.metrics,
            config.identity,
            self._error,
            self.attribution,
            self._record_blocked,
            self._scope_of if config.workload and upstream is None else None,
            Cutoff(config.cutoff) if config.cutoff.enabled and config.mode == "enforce" else None,
        )
        self.listeners = StubListeners(
            self.handler, config.stub.listen, ClientFilter(config.stub.clients, self.metrics)
        )
        self._watch: TableWatch | None = None
        self._loaded: frozenset[bytes] = frozenset()
        self._others = 0  # ruleset generation minus our own commits when the table was last seen intact
        self._resync = False  # a set transaction failed: the kernel lacks grants the allow state has
        self._resync_failing = False
        self._restore_failing = False
        self._nflog: NflogSocket | None = None
        self._audit: AuditRecorder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._compaction: asyncio.Task[None] | None = None
        self._status_writer = ThreadPoolExecutor(1, "ztdns-agent-status")
        self._started = time.time()
        self._lock: int | None = None
        # The mark the stack's packets carry past the packet-socket hook: random, so that a process that may
        # open packet sockets (CAP_NET_RAW) cannot simply copy it.
        self._mark = int.from_bytes(os.urandom(4), "big") & config.firewall.packet_mark_mask
        self._devices: tuple[str, ...] = ()
        # While a restart reads the grants back: the addresses written or closed meanwhile (None otherwise).
        self._restoring: set[str] | None = None
        self._installs = 0  # table (re)builds: one during the read-back means every grant is written again after it

    async def _record_blocked(self, name: str, asker: list[Asker | None], code: int, reason: str) -> None:
        """A name the resolver refused: recorded for ``learn`` by the status thread (a /proc walk for the
        process and a file append do not belong on the event loop), at most once a second per name and workload."""
        found = asker[0] if asker else None
        now = time.time()
        if not self.blocked.due(name, found.cgroup if found else 0, now):
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._status_writer, self.blocked.record, name, found, code, reason, now
            )
        except OSError as exc:
            self._error(f"recording a refused name: {exc}")

    def _scope_of(self, peer: Peer) -> Scope | None:
        """The workload whose cgroup the asking socket is in (None: the host's). A cgroup not seen before sends
        the workloads' cgroups to be walked again (at most once a second per cgroup) and, when a workload's cgroup
        appeared or was recreated, the ruleset rebuilt before the answer goes upstream."""
        if self.attribution is None:
            return None
        asker = self.attribution.diag.asker(peer.protocol, peer.local, peer.remote)
        if asker is None:
            return None
        index = self.workloads.index(asker.cgroup)
        if index is None:
            now = time.monotonic()
            if now - self._unknown_cgroups.get(asker.cgroup, -2.0) < 1.0:
                return None
            if len(self._unknown_cgroups) > 4096:
                self._unknown_cgroups.clear()
            self._unknown_cgroups[asker.cgroup] = now
            if self.workloads.refresh():
                self._rebuild("a workload's cgroup appeared")
            index = self.workloads.index(asker.cgroup)
        return None if index is None else self.scopes[index + 1]

    def _rebuild(self, why: str) -> None:
        try:
            self._install()
            log.info("ruleset rebuilt: %s", why)
        except NftError as exc:
            self._error(f"rebuilding the ruleset ({why}) failed (retrying): {exc}")

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append((time.time(), message))

    def _committed(self, batch: SetUpdate) -> None:
        if self._restoring is not None:  # closed ones too: a grant not read back yet may hold them
            self._restoring.update(batch.timeouts, batch.removals)
        metrics = self.metrics
        metrics.added += batch.added
        metrics.refreshed += batch.refreshed
        metrics.evicted += len(batch.removals)
        metrics.shed += batch.shed
        # The kernel has the grants already; a journal failure costs persistence, not the answer.
        try:
            if self.store.append(batch.grants) and self._compaction is None:
                self._compaction = asyncio.get_running_loop().create_task(self._compact())
        except OSError as exc:
            self._error(f"journal write failed: {exc}")

    def _not_committed(self, batch: SetUpdate) -> None:
        # The allow state has grants the kernel does not: write every live grant again at the next table check
        # (a repeated answer is not written again when its grant already lasts long enough).
        self._resync = True

    async def _compact(self) -> None:
        """Rewrite the snapshot between answers, a chunk of grants per loop turn (≈ 1 ms each): writing 100k
        grants in one go would hold every answer on the host for over half a second."""
        try:
            self.store.begin_compaction()
            for scope in self.scopes:
                addresses = scope.state.addresses()
                for start in range(0, len(addresses), _COMPACTION_CHUNK):
                    self.store.write_snapshot(scope.state.grants(addresses[start : start + _COMPACTION_CHUNK]))
                    await asyncio.sleep(0)
            self.store.finish_compaction()
        except OSError as exc:
            self.store.abort_compaction()
            self._error(f"journal compaction failed: {exc}")
        except asyncio.CancelledError:
            self.store.abort_compaction()
            raise
        finally:
            self._compaction = None

    async def start(self) -> None:
        """Take the lock, put the table in force, answer. After a restart with the kernel's table as the last run
        left it (``_keep_table``), the stub answers at once and the grants are read back afterwards (``_resume``);
        otherwise the table is built with every grant first (fail closed), then the stub answers."""
        config = self.config
        # Before anything else: a second agent on this state directory must change nothing (AgentRunning).
        self._lock = lock.acquire(config.state_path)
        self.workloads.refresh()
        self._watch = TableWatch(TABLE)
        kept = self._keep_table()
        if not kept:
            now = time.time()
            for state, grants in self._by_scope(self.store.load(now)):
                state.restore(grants, now)
            try:
                self.elements.in_place = updates_timeouts_in_place(self.nft)
            except NftError as exc:  # the three-step update is exact on every kernel
                log.warning("cannot tell whether the kernel updates element timeouts in place: %s", exc)
            self._install()
            restored = sum(len(scope.state) for scope in self.scopes)
            log.info("table inet ztdns in force (%s mode), %d addresses restored", config.mode, restored)
        if config.mode == "audit":
            self._start_audit()
        await self.listeners.start()
        loop = asyncio.get_running_loop()
        if kept:
            # The grants the kernel holds are the journal's: read them back into the allow state between answers.
            self._restoring = set()
            self._compaction = loop.create_task(self._resume(time.perf_counter()))
            log.info("table inet ztdns kept as the last run left it (%s mode): answering", config.mode)
        if config.resolv_conf:
            hostdns.point_at_stub(config.path(config.resolv_conf), config.state_path, config.stub.listen)
        if config.metrics.address:
            from prometheus_client import start_http_server

            host, port = parse_hostport(config.metrics.address, 9154)
            start_http_server(port, host, registry=self.metrics.registry)
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._watch_table())]
        self._tasks.append(loop.create_task(self._expire()))
        # After the stub listens (a restart answers again as soon as the table is back): which addresses flows
        # use, for the first name over its cap; and the restored grants rewritten as a fresh snapshot, a chunk
        # at a time between answers.
        self._tasks.append(loop.create_task(self._refresh_live()))
        if not kept:
            self._compaction = loop.create_task(self._compact())
        self.write_status()
        gc.freeze()  # start-up objects (modules, config, restored grants) live for the whole run

    def _by_scope(self, grants: list[Grant]) -> list[tuple[AllowState, list[Grant]]]:
        """Grants by the allow state they belong to: a workload's by its identity, the host's every other one."""
        by_identity: dict[str, list[Grant]] = {}
        for grant in grants:
            by_identity.setdefault(grant.identity, []).append(grant)
        owned = [(scope.state, by_identity.pop(scope.identity, [])) for scope in self.scopes[1:]]
        return [*owned, (self.state, [grant for grants in by_identity.values() for grant in grants])]

    def _keep_table(self) -> bool:
        """Whether the kernel's table is the one this configuration builds, exactly as the last run loaded it
        (``table.json``: a digest of the ruleset text and of the kernel's definition, the packet mark, whether
        the kernel updates timeouts in place, the kernel release, the workloads' cgroup IDs). Then it stays, with
        its set elements: the kernel kept every grant through the restart, nothing needs rebuilding or writing
        before the stub answers."""
        assert self._watch is not None
        try:
            saved = json.loads((self.config.state_path / TABLE_STATE).read_text(encoding="utf-8"))
            mark, in_place = int(saved["mark"]), bool(saved["in_place"])
            ruleset, table, kernel = str(saved["ruleset"]), str(saved["table"]), str(saved["kernel"])
            cgroups = [[str(name), int(inode)] for name, inode in saved["workloads"]]
        except (OSError, ValueError, TypeError, KeyError):
            return False
        if kernel != os.uname().release or mark & ~self.config.firewall.packet_mark_mask:
            return False
        # nftables matched each workload's cgroup by its ID at load time: a cgroup recreated since needs a rebuild.
        if cgroups != [[name, inode] for name, inode in self.workloads.present]:
            return False
        devices = egress_devices() if self.config.firewall.packet_egress else ()
        text = build_ruleset(self.config, devices, mark, self.workloads.rules())
        if _digest([text.encode()]) != ruleset:
            return False
        try:
            current = self._watch.fingerprint()
        except NftError:
            return False
        if not current or _digest(current) != table:
            return False
        self._mark, self._devices, self._loaded = mark, devices, current
        self.elements.in_place = in_place
        self._others = self._watch.generation() - self.elements.commits
        return True

    def _remember_table(self, ruleset: str) -> None:
        """Write ``table.json`` for the next start's ``_keep_table`` (after every (re)build)."""
        saved = {
            "mark": self._mark,
            "in_place": self.elements.in_place,
            "kernel": os.uname().release,
            "ruleset": _digest([ruleset.encode()]),
            "table": _digest(self._loaded),
            "workloads": self.workloads.present,
        }
        path = self.config.state_path / TABLE_STATE
        temporary = path.with_suffix(".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the mark stays private
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(saved, file)
            os.replace(temporary, path)
        except OSError as exc:  # the next start rebuilds the table: slower, not less safe
            log.warning("writing %s: %s", path, exc)

    async def _resume(self, answering: float) -> None:
        """After a restart that kept the table: read the journal in the status thread, restore it into the allow
        states a chunk at a time between answers, then write the addresses written or closed meanwhile again with their
        timeouts from every holder (an answer or expiry in the gap knew only the grants read back so far), then
        compact."""
        loop = asyncio.get_running_loop()
        installs = self._installs
        try:
            grants = await loop.run_in_executor(self._status_writer, self.store.load, time.time())
            for state, owned in self._by_scope(grants):
                for start in range(0, len(owned), _RESTORE_CHUNK):
                    state.restore(owned[start : start + _RESTORE_CHUNK], time.time())
                    await asyncio.sleep(0)
        except OSError as exc:
            self._error(f"reading the grants back: {exc}")
        answered, self._restoring = self._restoring or set(), None
        if self._installs != installs:  # rebuilt meanwhile with the grants read back so far
            self._resync = True
        for scope in self.scopes:
            timeouts = scope.state.live_timeouts(time.time(), answered)
            if timeouts:
                try:
                    scope.writer.load(timeouts)
                except NftError:
                    self._resync = True  # the table check writes every grant again
        restored = sum(len(scope.state) for scope in self.scopes)
        log.info(
            "%d addresses read back %.0f ms after the stub answered", restored, 1000 * (time.perf_counter() - answering)
        )
        await self._compact()

    def _install(self) -> None:
        """(Re)build the table, then write every live grant; remember the definition loaded.

        The moment between the two leaves the table without grants: closed, never open.
        """
        assert self._watch is not None
        self._devices = egress_devices() if self.config.firewall.packet_egress else ()
        ruleset = build_ruleset(self.config, self._devices, self._mark, self.workloads.rules())
        self.nft.run(ruleset)
        for scope in self.scopes:
            scope.writer.load(scope.state.live_timeouts(time.time()))
        self._loaded = self._watch.fingerprint()
        self._others = self._watch.generation() - self.elements.commits
        self._installs += 1
        self._remember_table(ruleset)

    async def _watch_table(self) -> None:
        while True:
            await asyncio.sleep(_WATCH)
            self.check_table()
            if self._resync:
                self._write_grants_again()

    async def _expire(self) -> None:
        """Forget grants as they expire, in small steps between answers (once a second, 10k names/s expiring
        would be one pause of ~20 ms), and delete the addresses nobody holds any more from the kernel's sets
        ourselves, just before their elements time out: a timed-out element matches nothing but stays until the
        kernel's own sweep, which walks the whole set — a burst of 10–15 ms with 200k addresses — so that sweep is
        left to run only rarely (ruleset.py) and the sets hold only what is open. (A timed-out element cannot be
        deleted: the kernel no longer finds it. Hence the lead: the kernel's timeout is the grant's, rounded up.)"""
        failing = False
        while True:
            await asyncio.sleep(_EXPIRY_STEP)
            for scope in self.scopes:
                gone = scope.state.expire(time.time() + _EXPIRY_LEAD, _EXPIRY_LIMIT)
                if not gone:
                    continue
                self.metrics.expired += len(gone)
                closed = [grant.address for grant in gone if not scope.state.holds(grant.address)]
                if self._restoring is not None:
                    self._restoring.update(closed)
                try:
                    if closed:
                        self.elements.write(packed_sets({}, closed, *scope.writer.sets))
                    failing = False
                except NftError as exc:  # the kernel's sweep frees them later
                    if not failing:
                        log.warning("deleting expired addresses from the sets failed: %s", exc)
                    failing = True

    def _write_grants_again(self) -> None:
        try:
            for scope in self.scopes:
                scope.writer.load(scope.state.live_timeouts(time.time()))
        except NftError as exc:
            if not self._resync_failing:  # one log line per incident
                self._error(f"writing the allow sets again failed (retrying): {exc}")
            self._resync_failing = True
            return
        self._resync = self._resync_failing = False

    def check_table(self) -> None:
        """Rebuild the table if it is not the one the agent loaded (fail closed against tampering)."""
        assert self._watch is not None
        try:
            # Our own set transactions move the generation too; anything beyond them was someone else's.
            others = self._watch.generation() - self.elements.commits
            if others == self._others and not self._restore_failing:
                return
            current = self._watch.fingerprint()
            if current == self._loaded:  # a change elsewhere in the ruleset
                self._others = others
                self._restore_failing = False
                return
            if not self._restore_failing:  # one count and one log line per incident, however long it lasts
                self.metrics.table_restored += 1
                what = "deleted" if not current else "altered"
                self._error(f"table inet ztdns was {what} by someone else; restoring it ({len(self.state)} addresses)")
            self._install()
            self._restore_failing = False
        except NftError as exc:
            if not self._restore_failing:
                self._error(f"cannot restore table inet ztdns (retrying): {exc}")
            self._restore_failing = True

    async def _refresh_live(self) -> None:
        """One conntrack dump, in the status thread (it parses every entry: off the event loop)."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._status_writer, self.live.refresh)
        except OSError as exc:
            self._error(f"reading conntrack for the per-name cap: {exc}")

    def _hook_new_devices(self) -> None:
        """A device came or went (a VPN tunnel, a hot-plugged NIC): rebuild the tables with it hooked."""
        try:
            self._install()
        except NftError as exc:
            self._error(f"hooking the host's devices against packet sockets failed (retrying): {exc}")

    def _start_audit(self) -> None:
        try:
            self._nflog = NflogSocket(self.config.firewall.log_group)
        except OSError as exc:
            self._error(f"audit records unavailable (NFLOG group {self.config.firewall.log_group}): {exc}")
            return
        records = self.config.state_path / AUDIT_LOG
        self._audit = AuditRecorder(records, self.state.last_name, self.metrics.count_audit_drop)
        asyncio.get_running_loop().add_reader(self._nflog.sock.fileno(), self._read_audit)

    def _read_audit(self) -> None:
        assert self._nflog is not None and self._audit is not None
        try:
            self._audit.record(self._nflog.read())
        except OSError as exc:
            self._error(f"reading audit records: {exc}")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            # The learned grants are long-lived containers without reference cycles (freed by reference
            # counting). Left to the cyclic collector, every full collection walks all of them — a pause of
            # tens of milliseconds with 100k grants, straight into the answer latency. Collect the young
            # generations (where the short-lived cycles are), then move the survivors out of the collector's
            # sight. The price: a cycle formed between old objects is never reclaimed.
            gc.collect(1)
            gc.freeze()
            self.metrics.live = sum(len(scope.state) for scope in self.scopes)
            for scope in self.scopes:
                if scope.upstreams.reload_if_changed():
                    log.info("a client certificate changed on disk: new connections use it")
            if self.config.workload and self.workloads.refresh():
                self._rebuild("a workload's cgroup appeared, went or was recreated")
            if self.config.firewall.packet_egress and egress_devices() != self._devices:
                self._hook_new_devices()
            if self.attribution is not None and self.attribution.log.changed:
                self.attribution.log.changed = False
                self._status_writer.submit(self._write_asked, self.attribution.log.dump())
            if self.live.wanted:  # a name went over its cap: which of its addresses do flows still use?
                self.live.wanted = False
                await self._refresh_live()
            # Written by a worker thread: a file write and a rename can take a millisecond or more (journaling
            # file systems), time every answer arriving meanwhile would wait.
            try:
                await asyncio.get_running_loop().run_in_executor(self._status_writer, self._write_status, self.status())
            except OSError as exc:
                self._error(f"writing status: {exc}")

    def write_status(self) -> None:
        self._write_status(self.status())

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "pid": os.getpid(),
            "started": self._started,
            "updated": time.time(),
            "mode": self.config.mode,
            "identity": self.config.identity,
            "listen": self.config.stub.listen,
            "servers": [
                {
                    "address": s.config.address,
                    "hostname": s.config.hostname,
                    "transport": s.config.transport,
                    "up": s.down_until <= now,
                    "last_error": s.last_error,
                }
                for s in self.upstreams.servers
            ],
            "live_addresses": sum(len(scope.state) for scope in self.scopes),
            "names": sum(scope.state.name_count() for scope in self.scopes),
            "errors": [{"time": t, "message": m} for t, m in self.errors],
        }

    def _write_asked(self, rows: list[list[object]]) -> None:
        path = self.config.state_path / ASKED
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(rows, separators=(",", ":")), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("writing %s: %s", path, exc)

    def _write_status(self, status: dict[str, object]) -> None:
        path = self.config.state_path / STATUS
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status, indent=1), encoding="utf-8")
        os.replace(temporary, path)

    async def stop(self) -> None:
        for task in [*self._tasks, self._compaction]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.listeners.close()
        for scope in self.scopes:
            await scope.upstreams.close()
        if self.attribution is not None:
            self.attribution.close()
        if self._watch is not None:
            self._watch.close()
        self.elements.close()
        if self._nflog is not None:
            asyncio.get_running_loop().remove_reader(self._nflog.sock.fileno())
            self._nflog.close()
        if self._restoring is None:
            for scope in self.scopes:
                scope.state.expire(time.time())
            self.store.snapshot([grant for scope in self.scopes for grant in scope.state.grants()])
        # (Stopped while the grants were read back: the allow state lacks some, the journal has them all.)
        self.store.close()
        self._status_writer.shutdown(wait=True)  # a status write under way must not recreate the file
        (self.config.state_path / STATUS).unlink(missing_ok=True)
        if self._lock is not None:
            lock.release(self._lock, self.config.state_path)
            self._lock = None
        log.info("stopped; table inet ztdns stays in force")


@dataclass(slots=True)
class Scope:
    """Whose answers these are: the host's, or one workload's."""

    identity: str
    state: AllowState
    writer: SetWriter
    upstreams: Upstreams


def _digest(items: Iterable[bytes]) -> str:
    """SHA-256 of ``items`` in sorted order, each length-prefixed."""
    digest = hashlib.sha256()
    for item in sorted(items):
        digest.update(len(item).to_bytes(4, "big"))
        digest.update(item)
    return digest.hexdigest()


def _attribution() -> Attribution | None:
    try:
        return Attribution()
    except OSError as exc:  # no sock_diag (a kernel without it): answers are not attributed
        log.warning("cannot look up who asks the stub (sock_diag): %s", exc)
        return None


def run(config: AgentConfig) -> None:
    """Run the agent until SIGTERM/SIGINT, on uvloop (less loop overhead per answer, as in the server)."""
    import uvloop

    uvloop.run(_run(config))


async def _run(config: AgentConfig) -> None:
    from ztdns.agent.control import AgentNode  # here: the NATS client loads only with [control]

    node = AgentNode(config) if config.control is not None else None  # [control]: bundles from the fleet
    agent = Agent(node.start_config() if node is not None else config)
    await agent.start()
    if node is not None:
        node.attach(agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if node is not None:
        await node.close()
    await agent.stop()


def read_status(state_dir: Path) -> dict[str, object] | None:
    try:
        status: dict[str, object] = json.loads((state_dir / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status
