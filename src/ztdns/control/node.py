"""A node's side of the control plane: watch the bundle for its role, verify, apply, acknowledge.

Runs in the node's event loop next to its service. A bundle is applied only if the pinned public key signed it,
it is for this node's role and its revision is newer than the one running (the same revision again is only
acknowledged). The node's ``apply`` callback loads the written config and swaps it in as a reload does, raising
``ConfigError`` (file:line:key lines) to refuse it; a refusal is written to the node's key with the reason and
the node keeps serving what it ran. The last applied bundle stays in the state directory: a node whose control
plane is unreachable starts from it.

State directory: ``<role>.bundle`` (the signed bytes as received) and ``<role>/rev-N/`` (its config and files).
The node's key ``node.<name>`` holds a JSON report: role, identity, revision, digest, state (``ok`` or
``refused``), the refusal's reason, health, last seen, attestation digests; rewritten at every change and every
``heartbeat`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config import Config, parse_config
from ztdns.config.control import ControlConfig
from ztdns.control import nats as ctl
from ztdns.control.bundle import Bundle, BundleError, load_public_key, verify

log = logging.getLogger(__name__)

# Loads the config at the path (written from the bundle) and swaps it in; raises to refuse it.
Apply = Callable[[Bundle, Path], Awaitable[None]]


def public_key_of(control: ControlConfig, base_dir: Path) -> Ed25519PublicKey:
    return load_public_key(base_dir / control.public_key)


class Watcher:
    def __init__(
        self,
        control: ControlConfig,
        base_dir: Path,
        role: str,
        apply: Apply,
        identity: str = "",
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.control = control
        self.role = role
        self.apply = apply
        self.identity = identity or socket.gethostname()
        self.details = details  # extra facts for the report (attestation digests)
        self.public_key = public_key_of(control, base_dir)
        self.state_dir = base_dir / control.state_dir
        self.running: Bundle | None = None
        self.refused: tuple[int, str] | None = None  # the last refused revision and why
        self.health = "starting"
        self.client: Client | None = None
        self.kv: KeyValue | None = None
        self.applied = 0
        self.refusals = 0
        self.connected = False
        self._lock = asyncio.Lock()
        self._report_failing = False  # warned once per outage, not at every heartbeat

    # -- the last good bundle ---------------------------------------------------------------------------------

    @property
    def _saved(self) -> Path:
        return self.state_dir / f"{self.role}.bundle"

    def directory(self, revision: int) -> Path:
        return self.state_dir / self.role / f"rev-{revision}"

    def last_good(self) -> tuple[Bundle, Path] | None:
        """The saved bundle, verified again, and its config written out; None if there is none (or it is bad)."""
        try:
            data = self._saved.read_bytes()
        except FileNotFoundError:
            return None
        try:
            bundle = verify(data, self.public_key)
        except BundleError as exc:
            log.error("control: the saved bundle %s is not usable: %s", self._saved, exc)
            return None
        config = bundle.write(self.directory(bundle.revision))
        return bundle, config

    def _save(self, bundle: Bundle, data: bytes) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        temporary = self._saved.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._saved)
        for old in (self.state_dir / self.role).glob("rev-*"):
            if old.name != f"rev-{bundle.revision}":
                shutil.rmtree(old, ignore_errors=True)

    # -- offers -----------------------------------------------------------------------------------------------

    async def offer(self, data: bytes) -> bool:
        """Verify and apply one bundle's bytes; report the outcome. True if it runs now."""
        async with self._lock:
            try:
                bundle = verify(data, self.public_key)
                if bundle.role != self.role:
                    raise BundleError(f"a bundle for role {bundle.role!r}, this node is a {self.role}")
                running = self.running
                if running is not None and bundle.revision <= running.revision:
                    if bundle.revision == running.revision and bundle.digest() == running.digest():
                        await self.report()
                        return True
                    raise BundleError(
                        f"revision {bundle.revision} is not newer than the running revision {running.revision}"
                    )
            except BundleError as exc:
                await self._refuse(claimed_revision(data), str(exc))
                return False
            loop = asyncio.get_running_loop()
            # File work off the event loop: the node keeps serving (and other watchers in a process keep going).
            config = await loop.run_in_executor(None, bundle.write, self.directory(bundle.revision))
            try:
                await self.apply(bundle, config)
            except Exception as exc:  # ConfigError: file:line:key lines; anything else: its text
                shutil.rmtree(self.directory(bundle.revision), ignore_errors=True)
                await self._refuse(bundle.revision, str(exc) or type(exc).__name__)
                return False
            await loop.run_in_executor(None, self._save, bundle, data)
            self.running, self.refused, self.health = bundle, None, "ok"
            self.applied += 1
            log.info("control: running %s revision %d", self.role, bundle.revision)
            await self.report()
            return True

    async def _refuse(self, revision: int | None, reason: str) -> None:
        self.refusals += 1
        self.refused = (revision or 0, reason)
        log.error("control: refused %s revision %s, still running the previous one:\n%s", self.role, revision, reason)
        await self.report()

    def started_from(self, bundle: Bundle) -> None:
        """The service started from this (saved) bundle."""
        self.running, self.health = bundle, "ok"

    # -- the node's report ------------------------------------------------------------------------------------

    def report_document(self) -> dict[str, Any]:
        running = self.running
        document: dict[str, Any] = {
            "node": self.control.node,
            "role": self.role,
            "identity": self.identity,
            "revision": running.revision if running else 0,
            "digest": running.digest() if running else "",
            "state": "refused" if self.refused else "ok",
            "refused_revision": self.refused[0] if self.refused else None,
            "reason": self.refused[1] if self.refused else "",
            "health": self.health,
            "seen": time.time(),
        }
        if self.details is not None:
            with contextlib.suppress(Exception):  # a report without digests beats no report
                document.update(self.details())
        return document

    async def report(self) -> None:
        kv = self.kv
        if kv is None:
            return
        data = json.dumps(self.report_document()).encode()
        try:
            await kv.put(ctl.NODE_KEY.format(node=self.control.node), data)
        except Exception as exc:  # the control plane is down: the next heartbeat reports again
            if not self._report_failing:
                log.warning("control: cannot report (retrying every heartbeat): %s", exc)
            self._report_failing = True
        else:
            self._report_failing = False

    # -- the loop ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying until the control plane answers), then watch and report until cancelled."""
        delay = 0.5
        while True:
            try:
                client = await ctl.connect(self.control.servers, self.control.connect_timeout)
            except Exception as exc:
                self.connected = False
                log.warning("control: cannot reach %s: %s", ", ".join(self.control.servers), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.client, self.connected, delay = client, True, 0.5
            try:
                await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream electing a leader, a watch cut short: connect and watch again
                log.warning("control: watching %s failed: %s: %s", self.control.bucket, type(exc).__name__, exc)
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                self.kv = None
                with contextlib.suppress(Exception):
                    await client.close()

    async def _watch(self, client: Client) -> None:
        while True:
            try:
                self.kv = await ctl.bucket(client, self.control.bucket)
                break
            except BucketNotFoundError:  # nothing published yet
                await asyncio.sleep(1.0)
        await self.report()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            watcher = await self.kv.watch(ctl.BUNDLE_KEY.format(role=self.role))
            async for entry in watcher:
                if entry is not None and entry.value:
                    await self.offer(entry.value)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.control.heartbeat)
            await self.report()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    def collect(self) -> Iterator[Metric]:
        revision = self.running.revision if self.running else 0
        yield GaugeMetricFamily("ztdns_control_revision", "Bundle revision this node runs", value=revision)
        yield GaugeMetricFamily(
            "ztdns_control_connected", "1 while the control plane is reachable", value=int(self.connected)
        )
        yield CounterMetricFamily("ztdns_control_applied", "Bundles applied", value=self.applied)
        yield CounterMetricFamily(
            "ztdns_control_refused", "Bundles refused (see `ztdns control status`)", value=self.refusals
        )


def claimed_revision(data: bytes) -> int | None:
    """The revision a bundle claims (unverified: only to name it in a refusal)."""
    try:
        return int(json.loads(base64.b64decode(json.loads(data)["payload"]))["revision"])
    except Exception:
        return None


# The node's own sections: where it listens, logs and serves metrics, its process settings, its control plane and
# its attestation come from its local file, whatever the published bundle says.
NODE_LOCAL = ("listen", "log", "metrics", "server", "control", "attestation")


def published_config(bundle: Bundle, config_path: Path) -> Config:
    """The bundle's config as written at ``config_path``; errors name the operator's file and lines."""
    return parse_config(bundle.config, bundle.source, config_path.parent)


def node_config(local: Config, published: Config) -> Config:
    """``published`` with the node's own sections from ``local`` (TLS paths made absolute: they are the node's)."""
    listen = [
        item.model_copy(
            update={
                "cert": str(local.base_dir / item.cert) if item.cert else None,
                "key": str(local.base_dir / item.key) if item.key else None,
                "ca": str(local.base_dir / item.ca) if item.ca else None,
                "crl": [str(local.base_dir / crl) for crl in item.crl],
            }
        )
        for item in local.listen
    ]
    update: dict[str, Any] = {name: getattr(local, name) for name in NODE_LOCAL}
    update["listen"] = listen
    update["server"] = local.server.model_copy(update={"state_dir": str(local.base_dir / local.server.state_dir)})
    output = local.log.query_log.output
    if output not in ("stdout", "off"):
        query_log = local.log.query_log.model_copy(update={"output": str(local.base_dir / output)})
        update["log"] = local.log.model_copy(update={"query_log": query_log})
    control = local.control
    if control is not None:  # relative to the local file, which the merged config no longer sits next to
        update["control"] = control.model_copy(
            update={
                "public_key": str(local.base_dir / control.public_key),
                "state_dir": str(local.base_dir / control.state_dir),
            }
        )
    return published.model_copy(update=update)
