"""Running the server as a process: listeners, signals, the metrics endpoint, and worker processes.

SIGHUP reloads the config file atomically (a broken file is logged and the old config keeps serving);
SIGTERM/SIGINT stop accepting, let pending answers go out for up to ``server.drain_seconds``, and exit 0.
With ``workers = N`` the parent forks N workers that share the listening ports with SO_REUSEPORT; worker i
serves metrics on the metrics port + i. ``[authority]`` zones run in the same process
(:mod:`ztdns.authority.daemon`), which then must be the only one: zone data and key timelines are one
process's state. ``ztdns authority serve`` is this server without the resolver's listeners.
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

from prometheus_client import CollectorRegistry, start_http_server

from ztdns.config import Config, ConfigError, load_config, located
from ztdns.config.listen import ListenConfig
from ztdns.handler import Frontend, compile_runtime, make_resolver, make_shared_cache
from ztdns.observe.metrics import Metrics, MetricsCollector
from ztdns.observe.stage import Observer
from ztdns.replay import Replays
from ztdns.transport import Handler
from ztdns.transport.development import development_listeners, how_to_query
from ztdns.transport.doh import DohListener, start_doh_listener
from ztdns.transport.doq import start_doq_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.no_certificate import listener_handler
from ztdns.transport.tcp import TcpServer
from ztdns.transport.tls import TlsError, TlsMaterial
from ztdns.transport.udp import UdpListener

if TYPE_CHECKING:
    from ztdns.attest.report import Attestor
    from ztdns.authority.daemon import AuthorityService
    from ztdns.control.bundle import Bundle
    from ztdns.control.node import Watcher

log = logging.getLogger("ztdns")


class EncryptedListener(Protocol):
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
    files, and the query log's directory. ``ztdns check`` runs this so that a config it passes also starts.
    Raises ConfigError."""
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
        from ztdns.authority.build import check_zone
        from ztdns.authority.zone import ZoneError

        for index, zone in enumerate(config.authority.zones):
            try:
                check_zone(zone, config.base_dir)
            except ZoneError as exc:
                raise located(
                    config, ("authority", "zones", index, "file" if zone.file else "name"), str(exc)
                ) from None
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
        self.udp: list[UdpListener] = []
        self.tcp: list[TcpServer] = []
        self.encrypted: list[EncryptedListener] = []
        self.hints = ""
        self.stopping = asyncio.Event()
        self.attestor: Attestor | None = None
        self.measuring: asyncio.Task[None] | None = None

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
        await self._swap(node_config(self.local, published))
        self.published = published
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
        if self.config.metrics.enabled:
            host, port = self.config.metrics.hostport()
            registry = CollectorRegistry()
            registry.register(MetricsCollector(lambda: self.frontend.metrics))
            try:
                start_http_server(port + self.worker, host, registry)
            except OSError as exc:
                message = f"cannot serve metrics on {host}:{port + self.worker}: {exc.strerror or exc}"
                raise located(self.config, ("metrics", "address"), message) from None
            endpoints.append(f"metrics http://{host}:{port + self.worker}/metrics")
        return endpoints

    async def _start_listener(self, listen: ListenConfig) -> None:
        if listen.transport in _ENCRYPTED:
            tls = tls_material(self.config, listen)
            handler = listener_handler(listen, self.frontend)  # no_certificate = "refuse" wraps the frontend
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
        loop = asyncio.get_running_loop()
        try:
            local = await loop.run_in_executor(None, load_config, self.config_path)
            if self.published is not None:
                from ztdns.control.node import node_config

                await self._swap(node_config(local, self.published))
            else:
                await self._swap(local)
            self.local = local
        except ConfigError as exc:
            log.error("reload rejected, still serving the previous config:\n%s", exc)
            return
        except Exception:
            log.exception("reload failed, still serving the previous config")
            return
        log.info("reloaded %s", self.config_path)
        await self._measure("reload")

    async def _swap(self, config: Config) -> None:
        """Swap in a new config (SIGHUP, a bundle from the control plane). Raises, still serving the old one."""
        await self.frontend.reload(config)
        for encrypted in self.encrypted:
            encrypted.reload()  # certificates, keys, CA bundles and CRLs changed on disk
        if [lst.model_dump() for lst in config.listen] != [lst.model_dump() for lst in self.config.listen]:
            log.warning("reload: listener changes take effect on restart")
        self._reload_authority(config)
        self.config = config

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

    async def drain(self) -> None:
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
    logging.basicConfig(
        level=config.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
