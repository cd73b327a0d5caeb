"""Policy distribution on NATS JetStream: publish → every acknowledgement, p50/p99/max over rounds.

    .venv/bin/python bench/fleet.py [--resolvers 3] [--agents 50] [--rounds 20]      (root: agents in namespaces)
    .venv/bin/python bench/fleet.py --resolvers 0 --agents 0 --watchers 1000 --rounds 10

A 3-node NATS cluster (replicas 3), `--resolvers` real `ztdns serve` processes with `[control]`, `--agents` real
`ztdns agent` processes with `[control]`, each in a network namespace of its own (its own nftables table and stub;
a veth on a bridge to the NATS servers, which listen on the bridge's address), and `--watchers` simulated agents in
this process: the control plane's watcher (``Watcher``, one NATS connection each) with the agent's own apply step
minus the nftables transaction (``ztdns.agent.control``: the file validated, merged with a host file, its ruleset
built). One round publishes a resolver bundle and an agent bundle (one policy change for both roles) and waits until
every node reports the new revision; the time is from the first put to the last acknowledgement seen by a watcher
of the node keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.fleet import control_section, node_text
from fixtures.nats import NatsCluster
from fixtures.server import ServerProcess
from fixtures.unbound import free_port
from ztdns.agent.control import check, node_config, published_config
from ztdns.config import parse_model
from ztdns.config.agent import AgentConfig
from ztdns.config.control import ControlConfig
from ztdns.control import nats as ctl
from ztdns.control.bundle import Bundle, load_private_key, new_key_pair, pack
from ztdns.control.node import Watcher
from ztdns.lab import netns

BRIDGE, HUB = "ztfleet0", "10.98.0.1"  # the agents' namespaces reach NATS on the bridge's address

RESOLVER_CONFIG = """
[identities.office]
networks = ["127.0.0.0/8"]
policies = ["office"]

[policies.office]
allow = ["**.corp.test"]
deny = ["round{revision}.corp.test"]
"""

AGENT_CONFIG = """
[[server]]
address = "{hub}:853"
hostname = "dns.test"

[[exception]]
name = "round{revision}"
networks = ["10.0.0.0/8"]
"""

AGENT_HOST = """identity = "spiffe://fleet/{node}"
state_dir = "{state}"
resolv_conf = ""
[[server]]
address = "{hub}:853"
hostname = "dns.test"
[metrics]
address = ""
"""


def agent_host(node: str, urls: list[str], public_key: Path, state: Path) -> str:
    return AGENT_HOST.format(node=node, state=state, hub=HUB) + control_section(
        node, urls, public_key, state / "control"
    )


class AgentHosts:
    """Real `ztdns agent` processes, each in a namespace of its own, wired to a bridge holding the NATS address."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self.names = [f"ztfleet-a{index}" for index in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def build(self) -> None:
        ip = ("ip",)
        run([*ip, "link", "add", BRIDGE, "type", "bridge"])
        run([*ip, "addr", "add", f"{HUB}/16", "dev", BRIDGE])
        run([*ip, "link", "set", BRIDGE, "up"])
        for index, name in enumerate(self.names):
            netns.create(name)
            veth = f"ztfa{index}"
            run([*ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
            run([*ip, "link", "set", veth, "master", BRIDGE, "up"])
            address = f"10.98.{1 + index // 250}.{1 + index % 250}/16"
            run([*ip, "-n", name, "addr", "add", address, "dev", "eth0"])
            run([*ip, "-n", name, "link", "set", "eth0", "up"])

    def start(self, urls: list[str], public_key: Path) -> None:
        for index, name in enumerate(self.names):
            home = self.directory / f"a{index}"
            home.mkdir()
            config = home / "agent.toml"
            config.write_text(agent_host(f"a{index}", urls, public_key, home / "state"))
            log = (home / "agent.log").open("ab")
            command = [*netns.exec_prefix(name), sys.executable, "-m", "ztdns", "agent", "--config", str(config)]
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        for index, process in enumerate(self.processes):  # started: its status file is written
            status = self.directory / f"a{index}" / "state" / "status.json"
            deadline = time.monotonic() + 300
            while not status.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"agent a{index} did not start: {(status.parent.parent / 'agent.log').read_text()}"
                    )
                time.sleep(0.1)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)
        for name in self.names:
            netns.delete(name)
        run(["ip", "link", "del", BRIDGE], check=False)


def run(command: list[str], check: bool = True) -> None:
    subprocess.run(command, check=check, capture_output=True)


class SimulatedAgent:
    """One simulated agent: the agent's apply step on its host file, without the nftables transaction."""

    def __init__(self, host_file: str) -> None:
        self.local = parse_model(AgentConfig, host_file)

    async def apply(self, bundle: Bundle, path: Path) -> None:
        check(node_config(self.local, published_config(bundle, path)))


async def run_rounds(args: argparse.Namespace, directory: Path) -> list[float]:
    agents = AgentHosts(directory, args.agents)
    try:
        if args.agents:
            agents.build()
        nats = NatsCluster(directory / "nats", host=HUB if args.agents else "127.0.0.1").start()
        try:
            return await measure(args, directory, nats, agents)
        finally:
            nats.stop()
    finally:
        agents.close()


async def measure(args: argparse.Namespace, directory: Path, nats: NatsCluster, agents: AgentHosts) -> list[float]:
    private, public = directory / "signing.pem", directory / "signing.pub"
    new_key_pair(private, public)
    key = load_private_key(private)
    resolvers = []
    watchers: list[Watcher] = []
    tasks: list[asyncio.Task[None]] = []
    client = await ctl.connect(nats.urls, 2.0)
    try:
        for _ in range(100):  # JetStream elects its meta leader a few seconds after the cluster forms
            try:
                kv = await ctl.bucket(client, "ztdns", create=True, replicas=3)
                break
            except Exception:
                await asyncio.sleep(0.5)
        for index in range(args.resolvers):
            home = directory / f"r{index}"
            home.mkdir()
            port = free_port()
            text = node_text(f"r{index}", port, nats.urls, public, home / "state")
            resolvers.append(ServerProcess(text, home, port=port).start())
        agents.start(nats.urls, public)
        for index in range(args.watchers):
            state = directory / f"w{index}"
            control = ControlConfig(servers=nats.urls, public_key=str(public), node=f"w{index}", state_dir=str(state))
            simulated = SimulatedAgent(agent_host(f"w{index}", nats.urls, public, state))
            watcher = Watcher(control, directory, "agent", simulated.apply)
            watchers.append(watcher)
            tasks.append(asyncio.get_running_loop().create_task(watcher.run()))
        nodes = args.resolvers + args.agents + args.watchers
        times = []
        for revision in range(1, args.rounds + 1):
            bundles = {}
            for role, template in (("resolver", RESOLVER_CONFIG), ("agent", AGENT_CONFIG)):
                if (role == "resolver" and not args.resolvers) or (role == "agent" and nodes == args.resolvers):
                    continue
                source = directory / f"{role}-{revision}.toml"
                source.write_text(template.format(revision=revision, hub=HUB))
                bundles[role] = pack(source, role, revision).sign(key)
            acks: Any = await kv.watch("node.*")  # nats-py's watcher is untyped
            started = time.perf_counter()
            for role, data in bundles.items():
                await kv.put(f"bundle.{role}", data)
            running: set[str] = set()
            last = ""
            deadline = time.monotonic() + 60
            while len(running) < nodes and time.monotonic() < deadline:
                entry = await acks.updates(timeout=60)
                if entry is not None and entry.value:
                    report = json.loads(entry.value)
                    if report["revision"] == revision and report["node"] not in running:
                        running.add(report["node"])
                        last = report["node"]
            elapsed = time.perf_counter() - started
            await acks.stop()
            if len(running) < nodes:
                raise SystemExit(f"round {revision}: only {len(running)} of {nodes} nodes acknowledged")
            if revision > 1:  # the first round also waits for connections and the first watch
                times.append(elapsed)
            print(f"round {revision}: {nodes} nodes in {elapsed * 1000:.0f} ms (the last: {last})", file=sys.stderr)
            await asyncio.sleep(args.pause)
        return times
    finally:
        for task in tasks:
            task.cancel()
        for watcher in watchers:
            await watcher.close()
        await client.close()
        for process in resolvers:
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolvers", type=int, default=3)
    parser.add_argument("--agents", type=int, default=50, help="real agent processes, each in a namespace (root)")
    parser.add_argument("--watchers", type=int, default=0, help="simulated agents in this process")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between publishes")
    args = parser.parse_args()
    if args.agents and (why := netns.available()):
        raise SystemExit(f"--agents: {why} (or use --agents 0 --watchers N)")
    with tempfile.TemporaryDirectory() as directory:
        times = asyncio.run(run_rounds(args, Path(directory)))
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    print(
        f"{args.resolvers} resolvers + {args.agents} agents + {args.watchers} simulated agents, {len(times)} rounds: "
        f"publish → all acknowledgements p50 {statistics.median(times) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
