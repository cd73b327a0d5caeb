"""Fleet events: two real resolvers and a (simulated) agent publish to one JetStream stream; `ztdns control events`
tails them with filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.fleet import CORP, QUIET, control_section
from fixtures.nats import NatsCluster
from fixtures.server import ServerProcess, udp_query
from fixtures.unbound import free_port
from ztdns.config.control import ControlConfig
from ztdns.control.bundle import new_key_pair
from ztdns.control.events import EventPublisher

pytestmark = pytest.mark.slow


def resolver_text(node: str, port: int, url: str, public_key: Path, state: Path) -> str:
    listen = f'[[listen]]\ntransport = "udp"\naddress = "127.0.0.1:{port}"\n'
    return listen + CORP + control_section(node, [url], public_key, state, 'events = "ztdns-events"\n') + QUIET


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", size=1).start()
    yield cluster
    cluster.stop()


def events(url: str, *filters: str) -> list[dict[str, object]]:
    command = [sys.executable, "-m", "ztdns", "control", "events", "--servers", url]
    for item in filters:
        command += ["--filter", item]
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_events_from_two_resolvers_and_an_agent(tmp_path: Path, nats: NatsCluster) -> None:
    new_key_pair(tmp_path / "signing.pem", tmp_path / "signing.pub")
    url = nats.urls[0]
    resolvers = []
    for node in ("r1", "r2"):
        home = tmp_path / node
        home.mkdir()
        port = free_port()
        text = resolver_text(node, port, url, tmp_path / "signing.pub", home / "state")
        resolvers.append(ServerProcess(text, home, port=port).start())
    control = ControlConfig(
        servers=[url], public_key="signing.pub", node="agent1", state_dir="state", events="ztdns-events"
    )
    agent = EventPublisher(control)  # the agent's code path: flow records through the same publisher
    try:
        deadline = time.monotonic() + 30
        while True:  # the publishers connect and make the stream in the background
            for process in resolvers:
                assert udp_query(process.port, "www.corp.test").answer[0][0].to_text() == "192.0.2.7"
            agent.publish("flow", {"source": "10.0.0.5", "destination": "192.0.2.7", "port": 443, "verdict": "allowed"})
            found = events(url)
            if {event["node"] for event in found} == {"r1", "r2", "agent1"}:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        queries = events(url, "kind=query", "node=r2")
        assert queries and all(event["kind"] == "query" and event["node"] == "r2" for event in queries)
        record = queries[0]["record"]
        assert isinstance(record, dict)
        assert record["qname"] == "www.corp.test." and record["answers"] == ["192.0.2.7"]
        flows = events(url, "kind=flow")
        assert flows and all(event["node"] == "agent1" for event in flows)
        assert events(url, "match=10.0.0.5") == flows
        assert agent.dropped == 0
    finally:
        agent.close()
        for process in resolvers:
            process.stop()


def test_publishing_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    control = ControlConfig(
        servers=[f"nats://127.0.0.1:{free_port()}"],  # nobody listens
        public_key="k",
        node="r1",
        events="ztdns-events",
        events_queue=2,
    )
    publisher = EventPublisher(control)
    try:
        started = time.perf_counter()
        for index in range(1000):
            publisher.publish("verdict", {"n": index})
        assert time.perf_counter() - started < 2  # a queue append each, not a connection attempt (seconds)
        deadline = time.monotonic() + 5
        while publisher.dropped < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.dropped == 1000 and publisher.published == 0
    finally:
        publisher.close()


def test_a_reload_that_changes_the_log_keeps_publishing_fleet_events(tmp_path: Path) -> None:
    """The fleet's event sink is rebuilt with the other sinks when [log] changes, and follows [control] events."""
    import asyncio

    from ztdns.config import Config, parse_config
    from ztdns.control.events import JetStreamSink
    from ztdns.handler import Frontend

    (tmp_path / "signing.pub").write_text("unused here")
    base = (
        f'[control]\nservers = ["nats://127.0.0.1:{free_port()}"]\npublic_key = "signing.pub"\nnode = "r1"\n'
        'state_dir = "state"\nevents = "ztdns-events"\n'
    )

    def config(text: str) -> Config:
        return parse_config(base + text, "ztdns.toml", tmp_path)

    async def run() -> list[int]:
        frontend = Frontend(config(""), resolver_factory=lambda _: None)
        counts = [sum(isinstance(sink, JetStreamSink) for sink in frontend.outputs.sinks)]
        await frontend.reload(config('[log.query_log]\noutput = "off"\n'))
        counts.append(sum(isinstance(sink, JetStreamSink) for sink in frontend.outputs.sinks))
        await frontend.close()
        return counts

    assert asyncio.run(run()) == [1, 1]
