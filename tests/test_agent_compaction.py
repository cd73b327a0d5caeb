"""The agent compacts its grant journal between answers, and a compaction loses no grant (real nftables in a
namespace of our own: the agent builds its table there)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from ztdns.agent.config import AgentConfig
from ztdns.agent.persist import GrantStore
from ztdns.agent.service import Agent
from ztdns.config import parse_model
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

CONFIG = """resolv_conf = ""
[stub]
listen = ["127.0.0.1:53"]
[[server]]
address = "192.0.2.10:853"
hostname = "dns.test"
[metrics]
address = ""
"""


class Synthesiser:
    """Stands in for the protective servers: the i-th query gets A 10.0.x.y."""

    def __init__(self) -> None:
        self.count = 0

    async def query(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        self.count += 1
        address = f"10.0.{self.count >> 8}.{self.count & 255}"
        response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", address))
        return response.to_wire()


async def scenario(state_dir: Path) -> None:
    agent = Agent(parse_model(AgentConfig, f'state_dir = "{state_dir}"\n' + CONFIG), Synthesiser())
    await agent.start()
    agent.store.compact_after = 400
    try:
        compactions = 0
        for block in range(0, 3000, 100):
            queries = [dns.message.make_query(f"n{block + i}.test.", "A").to_wire() for i in range(100)]
            assert all(await asyncio.gather(*(agent.handler.ask(q) for q in queries)))
            compactions += agent._compaction is not None
        assert compactions >= 3  # several ran, each interleaved with answers
        if agent._compaction is not None:
            await agent._compaction
        assert not (state_dir / "journal.old.jsonl").exists() and not (state_dir / "snapshot.jsonl.tmp").exists()
        stored = {(g.address, g.name) for g in GrantStore(state_dir).load(time.time())}
        assert stored == {(g.address, g.name) for g in agent.state.grants()} and len(stored) == 3000
    finally:
        await agent.stop()
        agent.nft.run("delete table inet ztdns")


def test_compaction_runs_between_answers_and_loses_no_grant(tmp_path: Path) -> None:
    name = f"ztdns-compact-{os.getpid()}"
    netns.create(name)
    loop = NetnsLoop(name)
    try:
        loop.run(scenario(tmp_path), timeout=60)
    finally:
        loop.close()
        netns.delete(name)
