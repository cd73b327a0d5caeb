"""Running the server as a process: listeners, signals, the metrics endpoint, and worker processes.

SIGHUP reloads the config file atomically (a broken file is logged and the old config keeps serving);
SIGTERM/SIGINT stop accepting, let pending answers go out for up to ``server.drain_seconds``, and exit 0.
With ``workers = N`` the parent forks N workers that share the listening ports with SO_REUSEPORT; worker i
serves metrics on the metrics port + i. ``[authority]`` zones run in the same process
(:mod:`ztdns.authority.daemon`), which then must be the only one: zone data and key timelines are one
process's state. ``ztdns authority serve`` is this server without the resolver's listeners. The ``[admin]``
listener (:mod:`ztdns.admin`) runs in worker 0; its config changes take the reload path (:meth:`Service.apply_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector

from ztdns import __version__
from ztdns.config import Config, ConfigError, load_config, located
from ztdns.config.listen import ListenConfig
from ztdns.feeds import FeedManager
from ztdns.handler import Frontend, compile_runtime, make_resolver, make_shared_cache
from ztdns.observe.endpoint import serve_metrics, tls_context
from ztdns.observe.logfmt import configure as configure_logging
from ztdns.observe.metrics import Metrics, MetricsCollector, ProcessInfo
from ztdns.observe.stage import Observer
from ztdns.replay import Replays
from ztdns.transport import Handler
from ztdns.transport.development import development_listeners, how_to_query
from ztdns.transport.doh import DohListener, start_doh_listener
from ztdns.transport.doq import start_doq_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.no_certificate import listener_handler
from ztdns.transport.tcp import TcpServer
from ztdns.transport.tls import RefusalLog, TlsError, TlsMaterial
from ztdns.transport.udp import UdpListener

if TYPE_CHECKING:
    from ztdns.admin.server import AdminServer
    from ztdns.attest.report import Attestor
    from ztdns.authority.daemon import AuthorityService
    from ztdns.control.bundle import Bundle
    from ztdns.control.node import Watcher

log = logging.getLogger("ztdns")


class EncryptedListener(Protocol):
    refusals: RefusalLog

    def reload(self) -> bool: ...

    async def close(self, drain_seconds: float = 5.0) -> None: ...


async def _start_dot(listen: ListenConfig, handler: Handler, tls: TlsMaterial, reuse: bool) -> EncryptedListener:
    return await start_dot_listener(listen, handler, tls, reuse_port=reuse)


async def _start_doh(listen: ListenConfig, handler: Handler, tls: TlsMaterial, reuse: bool) -> EncryptedListener:
    return await start_doh_listener(listen, handler, tls, reuse_port=reuse)


async def _start_doq(listen: ListenConfig, handler: Handler, tls: TlsMaterial, reuse: bool) -> EncryptedListener:
    # QUIC has no SO_REUSEPORT load sharing (connections are not bound to a socket tuple): worker 0 only.
    return await start_doq_listener(listen, handler, tls)


_ENCRYPTED: dict[str, Callable[[ListenConfig, Handler, TlsMaterial, bool], Awaitable[EncryptedListener]]] = {
    "dot": _start_dot,
    "doh": _start_doh,
    "doq": _start_doq,
}


def tls_material(config: Config, listen: ListenConfig) -> TlsMaterial:
    """Read a listener's TLS files now; a problem is a ConfigError naming the listener's line."""
    try:
        return TlsMaterial.from_config(listen, config.base_dir)
    except TlsError as exc:
        if listen in config.listen:
            loc: tuple[str | int, ...] = ("listen", config.listen.index(listen))
            # TlsError messages start with the file at fault: point at the key that names it.
            written: list[tuple[tuple[str | int, ...], str | None]] = [
                (("cert",), listen.cert),
                (("key",), listen.key),
                (("ca",), listen.ca),
                *((("crl", index), crl) for index, crl in enumerate(listen.crl)),
            ]
            for key, path in written:
                if path and str(exc).startswith(f"{config.base_dir / path}:"):
                    loc = (*loc, *key)
                    break
            raise located(config, loc, str(exc)) from None
        raise ConfigError([f"{config.source}: listen {listen.address}: {exc}"]) from None  # development listeners


def verify(config: Config) -> None:
    """Read everything besides the TOML that serving would read: list files, local and authority zone files, TLS
    files (the admin listener's too), and the query log's directory. ``ztdns check`` runs this so that a config it
    passes also starts. Raises ConfigError."""
    compile_runtime(config, Observer(Metrics()), Replays(0))
    make_shared_cache(config)  # the key seed's file or variable; connects to nothing
    if config.control is not None:
        from ztdns.control.bundle import BundleError
        from ztdns.control.node import public_key_of

        try:
            public_key_of(config.control, config.base_dir)
        except (OSError, ValueError, BundleError) as exc:
            raise located(config, ("control", "public_key"), f"cannot use the public key: {exc}") from None
    resolver = make_resolver(config)  # root hints, trust anchors, upstreams' TLS files; opens no socket
    if resolver is not None:
        asyncio.run(resolver.close())
    for listen in config.listen:
        if listen.transport in _ENCRYPTED:
            tls_material(config, listen)
    if config.authority.zones:
        from ztdns.authority.build import check_zone, state_dir
        from ztdns.authority.zone import ZoneError

        for index, zone in enumerate(config.authority.zones):
            try:
                check_zone(zone, config.base_dir, state_dir(config))
            except ZoneError as exc:
                raise located(
                    config, ("authority", "zones", index, "file" if zone.file else "name"), str(exc)
                ) from None
    if config.admin.address is not None:
        from ztdns.admin.server import tls_context

        tls_context(config)
    output = config.log.query_log.output
    if output not in ("stdout", "off"):
        path = config.base_dir / output
        writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK | os.X_OK)
        if path.is_dir() or not writable:
            raise located(config, ("log", "query_log", "output"), f"cannot write the query log to {str(path)!r}")


def _no_resolver(config: Config) -> None:
    return None


def settle_garbage_collector() -> None:
    """Move everything built at start (policy tables, zones, the stage chain) out of the collector's sight.

    Every UDP packet allocates a few tracked tuples, so generation-0 collections run constantly; without this
    they also walk the large, long-lived heap of compiled config. Measured: steadier and faster replay
    throughput. Reloads build new objects, which the collector sees as usual.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class Service:
    """One server process. ``resolver=False`` (``ztdns authority serve``) runs only the ``[authority]``
    zones: no resolver listeners and no upstreams."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        worker: int = 0,
        reuse_port: bool = False,
        resolver: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.worker = worker
        self.reuse_port = reuse_port
        self.resolver = resolver
        self.local = config  # the node's own file; with [control], the published bundle supplies the rest
        self.published: Config | None = None
        self.watcher: Watcher | None = None
        self.watching: asyncio.Task[None] | None = None
        self._remeasure: asyncio.Task[None] | None = None
        if config.control is not None:
            config = self._start_from_last_good(config)
            self.config = config
        metrics = Metrics()
        self.authority: AuthorityService | None = None
        if config.authority.zones or config.authority.listen:
            # Imported only when zones are served: the others do not load the signer.
            from ztdns.authority.daemon import build_service

            self.authority = build_service(config, metrics)
        self.frontend = Frontend(
            config,
            metrics,
            make_resolver if resolver else _no_resolver,
            self.authority.authority if self.authority is not None else None,
        )
        # List feeds: fetched in the background; a new copy recompiles the policies like a reload.
        self.compiling = asyncio.Lock()
        self.feeds = FeedManager(config if resolver else config.model_copy(update={"policies": {}}), self._new_lists)
        metrics.register(self.feeds)
        self.udp: list[UdpListener] = []
        self.tcp: list[TcpServer] = []
        self.encrypted: list[EncryptedListener] = []
        self.hints = ""
        self.stopping = asyncio.Event()
        self.attestor: Attestor | None = None
        self.measuring: asyncio.Task[None] | None = None
        self.process_info = ProcessInfo(__version__, self._digests)
        self.frontend.metrics.register(self.process_info)
        self.admin: AdminServer | None = None

    def _start_from_last_good(self, local: Config) -> Config:
        """With ``[control]``: the node's file merged with the last good bundle, if there is one (docs/fleet.md)."""
        from ztdns.control.node import Watcher, node_config, published_config

        assert local.control is not None
        self.watcher = Watcher(
            local.control, local.base_dir, "resolver", self._apply_bundle, local.control.node, self._attestation
        )
        last = self.watcher.last_good()
        if last is None:
            return node_config(local, local)  # the same paths as merged configs will have: no spurious warnings
        bundle, path = last
        try:
            published = published_config(bundle, path)
            config = node_config(local, published)
            compile_runtime(config, Observer(Metrics()), Replays(0))  # lists, zones: what a reload would compile
        except ConfigError as exc:
            log.error("control: the saved bundle (revision %d) does not load:\n%s", bundle.revision, exc)
            return node_config(local, local)
        self.published = published
        self.watcher.started_from(bundle)
        log.info("control: starting from the saved bundle, revision %d", bundle.revision)
        return config

    async def _apply_bundle(self, bundle: Bundle, path: Path) -> None:
        """A verified bundle from the control plane: loaded and swapped in as SIGHUP does; raises to refuse it."""
        from ztdns.control.node import node_config, published_config

        published = await asyncio.get_running_loop().run_in_executor(None, published_config, bundle, path)
        async with self.compiling:
            notes = await self._apply(node_config(self.local, published))
        for note in notes:
            log.warning("control: %s", note)
        self.published = published
        if self.resolver:
            await self.feeds.reconfigure(self.config)
        # Acknowledged now; the new digests follow in the next report (hashing the code takes tenths of a second).
        self._remeasure = asyncio.get_running_loop().create_task(self._measure("reload"))

    def _attestation(self) -> dict[str, str]:
        measurements = self.attestor.measurements if self.attestor is not None else None
        if measurements is None:
            return {}
        assert self.attestor is not None
        return {
            "attestation": self.attestor.kind,
            "code_digest": measurements.code.digest,
            "config_digest": measurements.config.digest,
        }

    async def start(self) -> list[str]:
        endpoints = []
        self.frontend.bind_loop(asyncio.get_running_loop())
        if self.resolver:
            self.frontend.detector.preload()
        self.feeds.start()
        if self.watcher is not None:
            self.frontend.metrics.register(self.watcher)
            self.watching = asyncio.get_running_loop().create_task(self.watcher.run())
        listens = list(self.config.listen) if self.resolver else []
        await self._start_attestation()
        if self.config_path is None:
            # The built-in default also shows off encrypted DNS, with a development PKI made on first run.
            development, pki = development_listeners(Path(self.config.server.state_dir))
            listens += development
            self.hints = how_to_query(pki)
        for listen in listens:
            if listen.transport == "doq" and self.worker > 0:
                continue  # QUIC cannot share a port between processes (see _start_doq): worker 0 serves it
            try:
                await self._start_listener(listen)
            except OSError as exc:  # a port taken or not ours to bind: name the listener, no traceback
                where = ("listen", self.config.listen.index(listen), "address") if listen in self.config.listen else ()
                message = f"cannot listen on {listen.transport} {listen.address}: {exc.strerror or exc}"
                raise located(self.config, where, message) if where else ConfigError([message]) from None
            endpoints.append(f"{listen.transport} {listen.address}")
        if self.authority is not None:
            from ztdns.authority.daemon import ListenError

            try:
                endpoints += await self.authority.start()
            except ListenError as exc:
                raise located(self.config, exc.key, str(exc)) from None
        metrics = self.config.metrics
        if metrics.enabled:
            host, port = metrics.hostport()
            registry = CollectorRegistry()
            registry.register(MetricsCollector(lambda: self.frontend.metrics))
            ProcessCollector(registry=registry)
            context = None
            if metrics.cert is not None and metrics.key is not None:
                base = self.config.base_dir
                ca = None if metrics.ca is None else str(base / metrics.ca)
                try:
                    context = tls_context(str(base / metrics.cert), str(base / metrics.key), ca)
                except (OSError, ValueError) as exc:
                    raise located(self.config, ("metrics", "cert"), f"cannot load the TLS files: {exc}") from None
            try:
                serve_metrics(host, port + self.worker, registry, context)
            except OSError as exc:
                message = f"cannot serve metrics on {host}:{port + self.worker}: {exc.strerror or exc}"
                raise located(self.config, ("metrics", "address"), message) from None
            scheme = "http" if context is None else "https"
            endpoints.append(f"metrics {scheme}://{host}:{port + self.worker}/metrics")
        if self.config.admin.address is not None and self.worker == 0:
            from ztdns.admin.server import start_admin

            self.admin, url = await start_admin(self, self.config)
            endpoints.append(f"admin {url}")
        return endpoints

    async def _start_listener(self, listen: ListenConfig) -> None:
        if listen.transport in _ENCRYPTED:
            tls = tls_material(self.config, listen)
            handler = listener_handler(listen, self.frontend)  # no_certificate = "refuse" wraps the frontend
            if self.authority is not None and listen.transport == "dot":
                from ztdns.authority.daemon import UpdateRouting

                # RFC 2136 UPDATE over mTLS DoT, authorised by the client certificate's SPIFFE ID.
                handler = UpdateRouting(handler, self.authority.authority)
            encrypted = await _ENCRYPTED[listen.transport](listen, handler, tls, self.reuse_port)
            if isinstance(encrypted, DohListener) and self.attestor is not None and self.config.attestation.serve:
                from ztdns.attest.report import PATH
                from ztdns.attest.serve import ReportRoute

                encrypted.routes = {PATH: ReportRoute(self.attestor)}
            self.encrypted.append(encrypted)
        elif listen.transport == "udp":
            listener = UdpListener(listen, self.frontend, self.reuse_port)
            listener.start(asyncio.get_running_loop())
            self.udp.append(listener)
        elif listen.transport == "tcp":
            server = TcpServer(listen, self.frontend)
            await server.start(self.reuse_port)
            self.tcp.append(server)

    async def reload(self) -> None:
        self.frontend.reopen_logs()  # on every SIGHUP, as logrotate expects, even when the new config is rejected
        if self.config_path is None:
            log.warning("SIGHUP: running the built-in default config; nothing to reload")
            return
        # One compile at a time: a feed's recompile finishing late must not swap an older config back in.
        async with self.compiling:
            if not await self._reload_config(self.config_path):
                return
        if self.resolver:
            await self.feeds.reconfigure(self.config)
        log.info("reloaded %s", self.config_path)
        await self._measure("reload")

    async def _reload_config(self, path: Path) -> bool:
        loop = asyncio.get_running_loop()
        self._log_listener_counts()
        started = loop.time()
        try:
            local = await loop.run_in_executor(None, load_config, path)
            read = loop.time()
            if self.published is not None:
                from ztdns.control.node import node_config

                notes = await self._apply(node_config(local, self.published))
            else:
                notes = await self._apply(local)
            self.local = local
            log.debug("reload: config read in %.3f s, compiled in %.3f s", read - started, loop.time() - read)
        except ConfigError as exc:
            self.process_info.reloaded(False)
            log.error("reload rejected, still serving the previous config:\n%s", exc)
            return False
        except Exception:
            self.process_info.reloaded(False)
            log.exception("reload failed, still serving the previous config")
            return False
        for note in notes:
            log.warning("reload: %s", note)
        return True

    def verify(self, config: Config) -> None:
        verify(config)

    async def apply_config(self, config: Config) -> list[str]:
        """The admin API's reload: raises ConfigError keeping the old config in service; returns what takes
        effect only on restart."""
        if self.reuse_port:
            # Workers each hold a runtime: the parent's SIGHUP makes every one (this one too) read the file,
            # which the admin API has written.
            os.kill(os.getppid(), signal.SIGHUP)
            return ["applied by every worker when it reads the file (SIGHUP sent to the parent)"]
        async with self.compiling:
            try:
                notes = await self._apply(config)
            except Exception:
                self.process_info.reloaded(False)
                raise
        if self.resolver:
            await self.feeds.reconfigure(self.config)
        await self._measure("reload")
        return notes

    async def _apply(self, config: Config) -> list[str]:
        """The reload path for a config already read (SIGHUP, the admin API); the caller holds ``compiling``."""
        notes: list[str] = []
        await self.frontend.reload(config)
        self.process_info.reloaded(True)
        for encrypted in self.encrypted:
            encrypted.reload()  # certificates, keys, CA bundles and CRLs changed on disk
        if [lst.model_dump() for lst in config.listen] != [lst.model_dump() for lst in self.config.listen]:
            notes.append("listener changes take effect on restart")
        if config.admin.model_dump(exclude={"identities", "tokens"}) != self.config.admin.model_dump(
            exclude={"identities", "tokens"}
        ):
            notes.append("[admin] listener changes take effect on restart (identities and tokens apply now)")
        self._reload_authority(config)
        self.config = config
        return notes

    def _digests(self) -> tuple[str, str] | None:
        measurements = None if self.attestor is None else self.attestor.measurements
        return None if measurements is None else (measurements.code.digest, measurements.config.digest)

    async def _start_attestation(self) -> None:
        """Measure code and config (docs/attestation.md). With evidence, before serving: a TPM that fails stops
        the server. Without, in the background (hashing the installed packages takes a few tenths of a second)."""
        from ztdns.attest.report import Attestor

        self.attestor = Attestor(self.config, self.worker)
        if self.attestor.kind == "none":
            self.measuring = asyncio.get_running_loop().create_task(self._measure("start"))
        else:
            await self._measure("start")

    async def _measure(self, event: str) -> None:
        """A failure on reload (or in the background) keeps the old measurement, which then no longer verifies:
        the digests say so."""
        from ztdns.attest.report import AttestationError

        assert self.attestor is not None
        if event != "start" and self.measuring is not None:
            await self.measuring  # the start's measurement must not land after this one
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.attestor.measure, self.config, event)
        except (AttestationError, OSError) as exc:
            if event == "start" and self.attestor.kind != "none":
                raise located(self.config, ("attestation",), str(exc)) from None
            log.error("attestation: %s", exc)

    def _reload_authority(self, config: Config) -> None:
        """Zones, keys for TSIG, grants, ACLs and RRL reload; where the authority listens and keeps keys does not."""
        restart_only = {"listen", "api", "key_store", "pkcs11", "state_dir"}
        old, new = self.config.authority, config.authority
        if self.authority is None:
            if new.zones or new.listen:
                log.warning("reload: [authority] zones take effect on restart")
            return
        if old.model_dump(include=restart_only) != new.model_dump(include=restart_only):
            log.warning("reload: [authority] %s changes take effect on restart", ", ".join(sorted(restart_only)))
        try:
            rebuilt = self.authority.reload(config)
        except ConfigError as exc:
            log.error("reload: [authority] rejected, zones keep serving the previous config:\n%s", exc)
            return
        if rebuilt:
            log.info("reload: zones rebuilt: %s", ", ".join(rebuilt))

    async def _new_lists(self) -> None:
        """A feed has a new copy: recompile the policies (in a thread) and swap them in, as a reload does."""
        async with self.compiling:
            await self.frontend.reload(self.config)
        log.info("list feeds: policies recompiled with the new copies")

    def _log_listener_counts(self) -> None:
        """At debug level (on SIGHUP and when draining): what each listener did since the start. Counts only."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        for udp in self.udp:
            host, port = udp.address[:2]
            # Replays answered in the lane are not counted here; the metrics count every answer.
            log.debug(
                "listener udp %s:%d: %d queries through the pipeline, %d dropped (backlog)",
                host,
                port,
                udp.completed,
                udp.dropped,
            )
        for tcp in self.tcp:
            log.debug("listener tcp %s: %d connections refused", tcp.config.address, tcp.refused)
        for encrypted in self.encrypted:
            refusals = encrypted.refusals
            log.debug("listener %s: %d handshakes refused", refusals.label, refusals.total)

    async def drain(self) -> None:
        self._log_listener_counts()
        await self.feeds.close()
        if self.admin is not None:
            await self.admin.close()
        timeout = self.config.server.drain_seconds
        for server in self.tcp:
            server.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for listener in self.udp:
            listener.stop()
        if self.authority is not None:
            self.authority.stop_accepting()
        pending = [task for listener in self.udp for task in listener.pending]
        if pending:
            await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0))
        for server in self.tcp:
            await server.drain(max(deadline - loop.time(), 0))
        for encrypted in self.encrypted:
            await encrypted.close(max(deadline - loop.time(), 0))
        for listener in self.udp:
            listener.close()
        if self.authority is not None:
            await self.authority.drain(max(deadline - loop.time(), 0))
        if self.watching is not None:
            self.watching.cancel()
            assert self.watcher is not None
            await self.watcher.close()
        await self.frontend.close()

    async def run(self, banner: bool) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        endpoints = await self.start()
        settle_garbage_collector()
        if banner:
            source = str(self.config_path) if self.config_path else "<built-in default>"
            print(f"ztdns: serving config {source}", file=sys.stderr)
            for endpoint in endpoints:
                print(f"ztdns: listening on {endpoint}", file=sys.stderr)
            if self.hints:
                print(self.hints, file=sys.stderr)
            sys.stderr.flush()
        await self.stopping.wait()
        log.info("draining")
        await self.drain()


def _run_worker(config: Config, config_path: Path | None, worker: int, reuse_port: bool, resolver: bool) -> None:
    async def main() -> None:
        await Service(config, config_path, worker, reuse_port, resolver).run(banner=worker == 0)

    import uvloop

    uvloop.run(main())


def serve(config: Config, config_path: Path | None, resolver: bool = True) -> int:
    """Run until SIGTERM/SIGINT; ``resolver=False`` serves only the ``[authority]`` zones (one process)."""
    configure_logging(config.log.level)
    workers = config.server.workers if resolver else 1
    if workers > 1 and config.control is not None:
        message = "[control] applies bundles in one process: set workers = 1 (run more nodes rather than workers)"
        raise located(config, ("server", "workers"), message)
    if workers > 1 and (config.authority.zones or config.authority.listen):
        message = (
            "[authority] zones are one process's state (updates, key timelines): set workers = 1, or serve them "
            "with `ztdns authority serve` from a config of their own"
        )
        raise located(config, ("server", "workers"), message)
    if workers == 1:
        _run_worker(config, config_path, 0, reuse_port=False, resolver=resolver)
        return 0
    children: dict[int, int] = {}  # pid → worker number
    for worker in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_worker(config, config_path, worker, reuse_port=True, resolver=True)
            except ConfigError as exc:  # a port taken, a file gone since the parent read the config: one line
                print(f"ztdns: worker {worker}: {exc}", file=sys.stderr)
                code = 1
            except BaseException:
                log.exception("worker %d failed", worker)
                code = 1
            os._exit(code)
        children[pid] = worker
    return _supervise(children)


def _supervise(children: dict[int, int]) -> int:
    """Forward signals to the workers and wait for them. A worker that dies on its own takes the server down:
    half the workers serving on silently would hide the failure from whoever watches the process."""
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 0
    while children:
        pid, code = os.wait()
        worker = children.pop(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        status = status or exit_code
        if not stopping:
            print(f"ztdns: worker {worker} exited (code {exit_code}): stopping the server", file=sys.stderr)
            forward(signal.SIGTERM, None)
            status = status or 1
    return status
