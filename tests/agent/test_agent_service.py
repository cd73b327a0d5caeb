"""The running agent in-process, in a network namespace of our own (it builds its nftables table there): journal
compaction between answers, and the kernel brought back in line after a failed set transaction."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from ztdns.agent import nfnetlink
from ztdns.agent.allowstate import SetUpdate
from ztdns.agent.nfnetlink import NetlinkError, TableWatch
from ztdns.agent.persist import GrantStore
from ztdns.agent.service import Agent
from ztdns.config import parse_model
from ztdns.config.agent import AgentConfig
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop

pytestmark = [
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
    pytest.mark.slow,
    pytest.mark.root,
]

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

    def __init__(self, ttl: int = 300) -> None:
        self.count = 0
        self.ttl = ttl

    async def query(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        self.count += 1
        address = f"10.0.{self.count >> 8}.{self.count & 255}"
        response.answer.append(dns.rrset.from_text(query.question[0].name, self.ttl, "IN", "A", address))
        return response.to_wire()


async def compaction(state_dir: Path) -> None:
    """Several compactions run while answers flow, and the files hold every grant afterwards."""
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


async def failed_commit(state_dir: Path) -> None:
    agent = Agent(parse_model(AgentConfig, f'state_dir = "{state_dir}"\n' + CONFIG), Synthesiser())
    await agent.start()
    query = dns.message.make_query("n1.test.", "A").to_wire()
    write = agent.elements.write
    try:

        def rejected(sets: object) -> None:
            raise NetlinkError("set update rejected: injected")

        agent.elements.write = rejected  # type: ignore[method-assign]
        first = await agent.handler.ask(query)
        assert first is not None and dns.message.from_wire(first).rcode() == dns.rcode.SERVFAIL
        agent.elements.write = write  # type: ignore[method-assign]
        # The state holds the grant the kernel never got; the same answer again is not written again...
        again = SetUpdate()
        agent.state.answer("n1.test", [("10.0.0.1", 300)], time.time(), "", again)
        assert not again
        # ...but the next table check writes every live grant again.
        await asyncio.sleep(0.2)
        elements = agent.nft.query("list set inet ztdns allow4")[0]["set"].get("elem", [])
        assert any(e["elem"]["val"] == "10.0.0.1" for e in elements if isinstance(e, dict)), elements
    finally:
        agent.elements.write = write  # type: ignore[method-assign]
        await agent.stop()
        agent.nft.run("delete table inet ztdns")


def set_sizes() -> dict[str, int]:
    """Elements per set of inet ztdns as the kernel counts them (expired ones included until swept)."""
    sizes = {}
    for kind, _, payload in TableWatch("ztdns")._dump(nfnetlink.NFT_MSG_GETSET):
        fields = dict(nfnetlink.attrs(payload[4:]))
        if kind & 0xFF == nfnetlink.NFT_MSG_NEWSET and nfnetlink.NFTA_SET_COUNT in fields:
            sizes[fields[nfnetlink.NFTA_SET_NAME].rstrip(b"\0").decode()] = int.from_bytes(
                fields[nfnetlink.NFTA_SET_COUNT], "big"
            )
    return sizes


async def expiry(state_dir: Path) -> None:
    """Expired addresses leave the kernel's set at once (the agent deletes them), not at the kernel's sweep."""
    config = f'state_dir = "{state_dir}"\n' + CONFIG + "[allow]\nttl_floor = 0\ngrace = 1\n"
    agent = Agent(parse_model(AgentConfig, config), Synthesiser(ttl=1))
    await agent.start()
    try:
        queries = [dns.message.make_query(f"n{i}.test.", "A").to_wire() for i in range(50)]
        assert all(await asyncio.gather(*(agent.handler.ask(q) for q in queries)))
        if not set_sizes():
            pytest.skip("this kernel does not report set sizes (NFTA_SET_COUNT)")
        assert set_sizes()["allow4"] == 50
        await asyncio.sleep(2.5)  # 1 s TTL + 1 s grace
        assert len(agent.state) == 0 and agent.metrics.expired == 50
        assert set_sizes()["allow4"] == 0  # the kernel's own sweep runs every 5 minutes
    finally:
        await agent.stop()
        agent.nft.run("delete table inet ztdns")


@pytest.mark.parametrize("scenario", [compaction, failed_commit, expiry])
def test_agent_in_its_own_namespace(tmp_path: Path, scenario: Callable[[Path], Coroutine[Any, Any, None]]) -> None:
    name = f"ztdns-agent-{os.getpid()}"
    netns.create(name)
    loop = NetnsLoop(name)
    try:
        loop.run(scenario(tmp_path), timeout=60)
    finally:
        loop.close()
        netns.delete(name)
