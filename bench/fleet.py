"""Policy distribution on NATS JetStream: publish → every acknowledgement, p50/p99/max over rounds.

    .venv/bin/python bench/fleet.py [--resolvers 3] [--agents 50] [--rounds 20]
    .venv/bin/python bench/fleet.py --resolvers 0 --agents 1000 --rounds 10

A 3-node NATS cluster (replicas 3) on loopback, `--resolvers` real `ztdns serve` processes with `[control]`, and
`--agents` simulated agent watchers in this process: the control plane's watcher code path (``Watcher``, one NATS
connection each) with the agent's check as the apply step (its config file parsed and validated). One round
publishes a resolver bundle and an agent bundle (one policy change for both roles) and waits until every node
reports the new revision; the time is from the first put to the last acknowledgement seen by a watcher of the
node keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures.nats import NatsCluster
from fixtures.server import ServerProcess
from fixtures.unbound import free_port
from ztdns.config.agent import load_agent_config
from ztdns.config.control import ControlConfig
from ztdns.control import nats as ctl
from ztdns.control.bundle import Bundle, load_private_key, new_key_pair, pack
from ztdns.control.node import Watcher

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
address = "127.0.0.1:853"
hostname = "dns.test"

[[exception]]
name = "round{revision}"
networks = ["10.0.0.0/8"]
"""


def node_text(node: str, port: int, urls: list[str], public_key: Path, state: Path) -> str:
    servers = ", ".join(f'"{url}"' for url in urls)
    return f"""
[server]
state_dir = "{state}"

[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[control]
servers = [{servers}]
public_key = "{public_key}"
node = "{node}"
state_dir = "{state / "control"}"

[attestation]
evidence = "none"

[log.query_log]
output = "off"

[metrics]
enabled = false
"""


async def check_agent(bundle: Bundle, path: Path) -> None:
    load_agent_config(path)


async def run(args: argparse.Namespace, directory: Path) -> list[float]:
    nats = NatsCluster(directory / "nats").start()
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
        for index in range(args.agents):
            control = ControlConfig(
                servers=nats.urls, public_key=str(public), node=f"a{index}", state_dir=str(directory / f"a{index}")
            )
            watcher = Watcher(control, directory, "agent", check_agent)
            watchers.append(watcher)
            tasks.append(asyncio.get_running_loop().create_task(watcher.run()))
        nodes = args.resolvers + args.agents
        times = []
        for revision in range(1, args.rounds + 1):
            bundles = {}
            for role, template in (("resolver", RESOLVER_CONFIG), ("agent", AGENT_CONFIG)):
                if (role == "resolver" and not args.resolvers) or (role == "agent" and not args.agents):
                    continue
                source = directory / f"{role}-{revision}.toml"
                source.write_text(template.format(revision=revision))
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
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolvers", type=int, default=3)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between publishes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        times = asyncio.run(run(args, Path(directory)))
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    print(
        f"{args.resolvers} resolvers + {args.agents} agents, {len(times)} rounds: publish → all acknowledgements "
        f"p50 {statistics.median(times) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
