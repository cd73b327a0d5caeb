"""The agent on the fleet's control plane (``[control]`` in the agent's file, docs/fleet.md).

The agent runs the control plane's own watcher (:class:`ztdns.control.node.Watcher`, role ``agent``): it verifies
the signature and revision of the agent bundle, keeps the last good one in ``[control] state_dir``, starts from it
when NATS is unreachable and acknowledges the revision it runs. The bundle supplies the fleet's part of the agent's
file — ``[[server]]``, ``[allow]``, ``[firewall]``, ``[[exception]]`` (``PUBLISHED``); everything else (identity,
mode, state and stub, the host's certificate, workloads, metrics, the control plane itself) stays the host's own.

Applying a bundle is what a restart with the new file would do, without the restart: the file is validated as
``ztdns agent check`` does (file:line:key errors refuse it), the allow settings are swapped, the table is rebuilt
with every live grant (closed, never open, in between; a table that does not load refuses the bundle and the
previous one is put back) and, when the servers or TLS settings changed, new queries go to the new servers.
Metrics: ``ztdns_control_*`` on the agent's endpoint. Client data touched: none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ztdns.agent.ruleset import build_ruleset
from ztdns.config import ConfigError, parse_model
from ztdns.config.agent import AgentConfig
from ztdns.control.bundle import Bundle, BundleError
from ztdns.control.node import Watcher

if TYPE_CHECKING:
    from ztdns.agent.service import Agent

log = logging.getLogger("ztdns.agent.control")

PUBLISHED = ("server", "allow", "firewall", "exception")


def published_config(bundle: Bundle, config_path: Path) -> AgentConfig:
    """The bundle's agent file as written at ``config_path``; errors name the operator's file and lines."""
    return parse_model(AgentConfig, bundle.config, bundle.source, config_path.parent)


def node_config(local: AgentConfig, published: AgentConfig) -> AgentConfig:
    """``local`` with the ``PUBLISHED`` sections of ``published`` (their files, e.g. an attestation key, found in
    the bundle's directory; the host's own stay relative to its file)."""
    servers = [
        server.model_copy(
            update={
                "require_attestation": server.require_attestation.model_copy(
                    update={"ak": str(published.base_dir / server.require_attestation.ak)}
                )
            }
        )
        if server.require_attestation is not None and server.require_attestation.ak
        else server
        for server in published.server
    ]
    update: dict[str, Any] = {name: getattr(published, name) for name in PUBLISHED}
    update["server"] = servers
    return local.model_copy(update=update)


def check(config: AgentConfig) -> None:
    """``ztdns agent check``'s check of a merged file: its ruleset builds."""
    build_ruleset(config)


class AgentNode:
    """The agent's watcher: the config to start with (the last good bundle's), then each new bundle applied."""

    def __init__(self, local: AgentConfig) -> None:
        control = local.control
        assert control is not None
        self.local = local
        self.agent: Agent | None = None
        try:
            self.watcher = Watcher(control, local.base_dir, "agent", self._apply, local.identity or control.node)
        except (OSError, ValueError, BundleError) as exc:
            raise ConfigError([f"[control] public_key {control.public_key}: cannot use it: {exc}"]) from None
        self._task: asyncio.Task[None] | None = None

    def start_config(self) -> AgentConfig:
        """The host's file merged with the last good bundle, if there is one that still loads."""
        last = self.watcher.last_good()
        if last is None:
            return self.local
        bundle, path = last
        try:
            config = node_config(self.local, published_config(bundle, path))
            check(config)
        except (ConfigError, ValueError) as exc:
            log.error("control: the saved bundle (revision %d) does not load:\n%s", bundle.revision, exc)
            return self.local
        self.watcher.started_from(bundle)
        log.info("control: starting from the saved bundle, revision %d", bundle.revision)
        return config

    def attach(self, agent: Agent) -> None:
        """Watch from now on, applying to ``agent`` (started); the watcher's metrics join the agent's."""
        self.agent = agent
        agent.metrics.registry.register(self.watcher)
        self._task = asyncio.get_running_loop().create_task(self.watcher.run())

    async def _apply(self, bundle: Bundle, path: Path) -> None:
        assert self.agent is not None
        published = await asyncio.get_running_loop().run_in_executor(None, published_config, bundle, path)
        config = node_config(self.local, published)
        check(config)
        apply(self.agent, config)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.watcher.close()


def apply(agent: Agent, config: AgentConfig) -> None:
    """Swap ``config`` into the running ``agent``; raises (NftError) with the previous config back in force."""
    previous = agent.config
    agent.config = config
    try:
        agent._install()  # the table from agent.config, every live grant written again
    except Exception:
        agent.config = previous
        agent._install()
        raise
    for scope in agent.scopes:
        scope.state.config = config.allow
    if (config.server, config.tls) != (previous.server, previous.tls):
        for scope in agent.scopes:
            scope.upstreams.reconfigure(config)
