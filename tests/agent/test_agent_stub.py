"""The stub handler's fail-closed path with a real kernel rejection: no answer without its set update."""

from __future__ import annotations

import asyncio
import os

import dns.message
import dns.rcode
import dns.rrset
import pytest

from ztdns.agent.allowstate import AllowState
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.nfnetlink import ElementWriter
from ztdns.agent.setwriter import SetWriter
from ztdns.agent.stub import StubHandler
from ztdns.config.agent import AllowConfig

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nftables netlink)"), pytest.mark.root]


class OneAnswer:
    """A protective server that answers every A query with 192.0.2.1."""

    async def query(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        return response.to_wire()


def test_set_update_rejected_by_the_kernel_gives_servfail_to_every_answer_of_the_batch() -> None:
    async def scenario() -> list[bytes | None]:
        # A table that does not exist: the kernel rejects the batch (ENOENT), touching nothing on this host.
        elements = ElementWriter(f"ztdns-missing-{os.getpid()}")
        errors: list[str] = []
        metrics = AgentMetrics()
        handler = StubHandler(
            OneAnswer(), AllowState(AllowConfig()), SetWriter(elements, lambda batch: None), metrics, "", errors.append
        )
        queries = [dns.message.make_query(f"n{i}.test.", "A").to_wire() for i in range(3)]
        try:
            responses = await asyncio.gather(*(handler.ask(q) for q in queries))
        finally:
            elements.close()
        assert len(errors) == 3 and all("No such file or directory" in e for e in errors)
        assert metrics.set_failures == 3
        return responses

    for wire in asyncio.run(scenario()):
        assert wire is not None
        response = dns.message.from_wire(wire)
        assert response.rcode() == dns.rcode.SERVFAIL and not response.answer
