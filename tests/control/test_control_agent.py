"""Agents on the control plane: a real `ztdns agent` with `[control]` in the agent lab's client namespace (real
nftables, unbound as its protective resolver), NATS JetStream on that namespace's loopback, signed agent bundles.

The bundle's `[[exception]]` opens 198.51.100.30 tcp/8080 without a DNS answer: whether the probe connects shows
which bundle the agent enforces."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_lab import PYTHON, RESOLVER, AgentProcess, Lab, Probe, agent_factory, lab, needs_root, probe
from fixtures.nats import NatsCluster
from ztdns.control.bundle import load_private_key, new_key_pair, pack

pytestmark = [needs_root("nats-server"), pytest.mark.root, pytest.mark.slow]
__all__ = ["agent_factory", "lab", "probe"]

OPENED = "198.51.100.30"


def published(folder: Path, name: str, networks: str = f"{OPENED}/32") -> Path:
    """The fleet's agent file: the protective server, grant timing and one exception."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agents.toml"
    path.write_text(
        f"""[[server]]
address = "{RESOLVER}:853"
hostname = "dns.test"

[allow]
ttl_floor = 0
grace = 1

[[exception]]
name = "{name}"
networks = ["{networks}"]
ports = [8080]
protocols = ["tcp"]
"""
    )
    return path


class ControlPlane:
    def __init__(self, lab: Lab, folder: Path) -> None:
        self.lab = lab
        self.folder = folder
        self.nats = NatsCluster(folder / "nats", size=1, netns=lab.client).start()
        self.private, self.public = folder / "signing.pem", folder / "signing.pub"
        new_key_pair(self.private, self.public)

    def control_section(self, state: Path) -> str:
        return (
            f'[control]\nservers = ["{self.nats.urls[0]}"]\npublic_key = "{self.public}"\nnode = "host1"\n'
            f'state_dir = "{state}"\nheartbeat = 1.0\n'
        )

    def ztdns(self, *args: str) -> Any:
        command = [PYTHON, "-m", "ztdns", "control", *args, "--servers", self.nats.urls[0]]
        return self.lab.in_ns(self.lab.client, *command, check=False)

    def publish(self, config: Path) -> Any:
        return self.ztdns(
            "publish", "--config", str(config), "--key", str(self.private), "--wait", "15", "--nodes", "1"
        )

    def put(self, config: Path, revision: int, key: Ed25519PrivateKey) -> None:
        """A bundle put as is (no checks: what a forger or a broken publisher would do)."""
        bundle = self.folder / f"bundle-{revision}"
        bundle.write_bytes(pack(config, "agent", revision).sign(key))
        script = (
            "import asyncio, sys\nfrom ztdns.control import nats\n"
            "async def put():\n"
            "    client = await nats.connect([sys.argv[1]], 2.0)\n"
            "    kv = await nats.bucket(client, 'ztdns')\n"
            "    await kv.put('bundle.agent', open(sys.argv[2], 'rb').read())\n"
            "    await client.close()\n"
            "asyncio.run(put())\n"
        )
        self.lab.in_ns(self.lab.client, PYTHON, "-c", script, self.nats.urls[0], str(bundle))

    def report(self, check: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            out = self.ztdns("status", "--json")
            nodes = json.loads(out.stdout)["nodes"] if out.returncode == 0 else []
            if nodes and check(nodes[0]):
                return dict(nodes[0])
            assert time.monotonic() < deadline, (out.stdout, out.stderr)
            time.sleep(0.3)


def test_an_agent_runs_acknowledges_refuses_and_restarts_from_its_last_good_bundle(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    plane = ControlPlane(lab, tmp_path)
    try:
        config = lab.config(tmp_path, extra=plane.control_section(tmp_path / "control"))
        agent_factory.append(AgentProcess(lab, config))
        assert not probe.connects(OPENED)  # the host's own file has no exception

        out = plane.publish(published(tmp_path / "rev1", "fleet"))
        assert out.returncode == 0, out.stderr + out.stdout
        assert "published revision 1" in out.stdout and "host1 (agent): runs it" in out.stdout
        assert probe.connects(OPENED)
        status = plane.ztdns("status")
        line = next(line.split() for line in status.stdout.splitlines() if line.startswith("host1"))
        assert line[:5] == ["host1", "agent", "spiffe://test/host", "1", "ok"], status.stdout
        # The bundle changed the exceptions, not the host's own: answers still open addresses.
        assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
        assert probe.connects("198.51.100.10")

        key = load_private_key(plane.private)
        plane.put(published(tmp_path / "forged", "forged", "198.51.100.0/24"), 5, Ed25519PrivateKey.generate())
        report = plane.report(lambda r: r["refused_revision"] == 5)
        assert "bad signature" in report["reason"] and report["revision"] == 1
        plane.put(published(tmp_path / "older", "older", "198.51.100.0/24"), 1, key)
        report = plane.report(lambda r: "not newer" in r["reason"])
        broken = published(tmp_path / "broken", "broken", "198.51.100.300/32")
        plane.put(broken, 6, key)
        report = plane.report(lambda r: r["refused_revision"] == 6)
        assert report["reason"].startswith("agents.toml:11: exception[0].networks[0]:"), report["reason"]
        assert report["revision"] == 1
        assert probe.connects(OPENED) and not probe.connects("198.51.100.20")  # revision 1 still in force

        out = plane.publish(published(tmp_path / "rev2", "moved", "198.51.100.20/32"))
        assert out.returncode == 0, out.stderr + out.stdout
        assert "published revision 7" in out.stdout
        assert probe.connects("198.51.100.20") and not probe.connects(OPENED)

        agent_factory[-1].kill(signal.SIGKILL)
        plane.nats.stop()
        lab.in_ns(lab.client, "nft", "delete", "table", "inet", "ztdns", check=False)  # a reboot's clean slate
        agent_factory.append(AgentProcess(lab, config))
        log = (tmp_path / "agent.log").read_text()
        assert "starting from the saved bundle, revision 7" in log, log
        assert probe.connects("198.51.100.20") and not probe.connects(OPENED)
        plane.nats.start()
        plane.report(lambda r: r["revision"] == 7 and time.time() - r["seen"] < 2)
    finally:
        plane.nats.stop()
