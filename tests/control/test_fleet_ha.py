"""HA in practice: three real `ztdns serve` resolvers over DoT, the agent's own failover (``Upstreams``) in front;
one resolver is killed under load and no client query fails — the failover is the only retry a client sees."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import dns.message
import pytest

from agent_lab import make_certs
from fixtures.fleet import CORP, QUIET
from fixtures.server import ServerProcess
from fixtures.unbound import free_port
from ztdns.agent.upstream import UpstreamError, Upstreams
from ztdns.config import parse_model
from ztdns.config.agent import AgentConfig

pytestmark = pytest.mark.slow

CLIENTS = 20
SECONDS = 4.0


def resolver_text(port: int, certs: Path) -> str:
    listen = f'[[listen]]\ntransport = "dot"\naddress = "127.0.0.1:{port}"\ncert = "{certs}/server.pem"\n'
    return listen + f'key = "{certs}/server.key"\n' + CORP + QUIET


def agent_config(ports: list[int], certs: Path) -> AgentConfig:
    servers = "".join(f'[[server]]\naddress = "127.0.0.1:{p}"\nhostname = "dns.test"\n' for p in ports)
    tls = f'[tls]\nca_file = "{certs}/ca.pem"\nclient_cert = "{certs}/client.pem"\nclient_key = "{certs}/client.key"\n'
    return parse_model(AgentConfig, "[stub]\ntimeout = 3.0\n" + servers + tls)


def test_one_of_three_resolvers_dies_under_load_and_no_client_query_fails(tmp_path: Path) -> None:
    make_certs(tmp_path)
    resolvers = []
    for index in range(3):
        home = tmp_path / f"r{index}"
        home.mkdir()
        port = free_port()
        resolvers.append(ServerProcess(resolver_text(port, tmp_path), home, port=port).start())

    async def load() -> tuple[int, list[str], float]:
        upstreams = Upstreams(agent_config([r.port for r in resolvers], tmp_path))
        answered = 0
        failures: list[str] = []
        slowest = 0.0
        stop = time.monotonic() + SECONDS

        async def client() -> None:
            nonlocal answered, slowest
            while time.monotonic() < stop:
                query = dns.message.make_query("www.corp.test", "A")
                started = time.monotonic()
                try:
                    response = dns.message.from_wire(await upstreams.query(query.to_wire()))
                except UpstreamError as exc:
                    failures.append(str(exc))
                    continue
                slowest = max(slowest, time.monotonic() - started)
                assert response.answer[0][0].to_text() == "192.0.2.7"
                answered += 1

        async def kill_the_first() -> None:
            await asyncio.sleep(SECONDS / 3)
            first = resolvers[0]
            assert first.proc is not None
            first.proc.send_signal(signal.SIGKILL)  # the server every agent uses first: no goodbye

        try:
            await asyncio.gather(kill_the_first(), *(client() for _ in range(CLIENTS)))
        finally:
            await upstreams.close()
        dead = upstreams.servers[0]
        assert dead.last_error and dead.down_until > 0
        return answered, failures, slowest

    try:
        answered, failures, slowest = asyncio.run(load())
    finally:
        for process in resolvers:
            process.stop()
    assert failures == []
    assert answered > CLIENTS * 10
    assert slowest < 3.0  # within the stub's budget: the failover is the one retry
