"""The agent's detection hook ([cutoff]): a detection verdict about the host, read from the resolver's answer,
makes the stub refuse the host's queries without asking upstream until the verdict's expiry."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import dns.edns
import dns.message
import dns.rcode

from ztdns.agent.allowstate import AllowState
from ztdns.agent.cutoff import Cutoff, notice_of
from ztdns.agent.metrics import AgentMetrics
from ztdns.agent.setwriter import SetWriter
from ztdns.agent.stub import StubHandler
from ztdns.config.agent import AllowConfig
from ztdns.config.agent_cutoff import CutoffConfig

NOW = 1_800_000_000.0


def verdict_text(detector: str, seconds: float) -> str:
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + seconds))
    return f"detect={detector} identity=lab domain=ex.com rate=812B/s limit=50B/s until={until}"


class Resolver:
    """A protective server: names under ex.com are refused with a verdict's EDE, the rest do not exist."""

    def __init__(self, detector: str = "tunnel") -> None:
        self.detector = detector
        self.asked: list[str] = []

    async def query(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        name = query.question[0].name.to_text()
        self.asked.append(name)
        response = dns.message.make_response(query)
        if name.endswith("ex.com."):
            response.set_rcode(dns.rcode.REFUSED)
            ede = dns.edns.EDEOption(dns.edns.EDECode.FILTERED, verdict_text(self.detector, 60))
            response.use_edns(0, options=[ede])
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


def run(resolver: Resolver, cutoff: Cutoff | None, names: list[str], clock: list[float]) -> list[dns.message.Message]:
    async def scenario() -> list[dns.message.Message]:
        # No answer here carries addresses, so the set writer is never used (no nftables, no root).
        handler = StubHandler(
            resolver, AllowState(AllowConfig()), cast(SetWriter, None), AgentMetrics(), "lab", print, cutoff=cutoff
        )
        answers = []
        for name in names:
            if name == "+61s":
                clock[0] += 61
                continue
            wire = await handler.ask(dns.message.make_query(name, "A", use_edns=0).to_wire())
            assert wire is not None
            answers.append(dns.message.from_wire(wire))
        return answers

    return asyncio.run(scenario())


def test_a_tunnel_verdict_cuts_the_host_off_until_it_expires() -> None:
    clock = [NOW]
    cutoff = Cutoff(CutoffConfig(enabled=True), clock=lambda: clock[0])
    resolver = Resolver()
    names = ["a.example.", "x1.ex.com.", "b.example.", "c.example.", "+61s", "d.example."]
    before, verdict, cut, cut_again, after = run(resolver, cutoff, names, clock)
    assert before.rcode() == dns.rcode.NXDOMAIN and verdict.rcode() == dns.rcode.REFUSED
    for answer in (cut, cut_again):
        assert answer.rcode() == dns.rcode.REFUSED
        ede = next(o for o in answer.options if isinstance(o, dns.edns.EDEOption))
        assert ede.code == dns.edns.EDECode.FILTERED
        assert ede.text == f"cut off by the agent: {verdict_text('tunnel', 60)}"
    assert after.rcode() == dns.rcode.NXDOMAIN  # the verdict expired: asked upstream again
    assert resolver.asked == ["a.example.", "x1.ex.com.", "d.example."]
    assert (cutoff.started, cutoff.refused) == (1, 2)


def test_without_the_hook_or_for_other_detectors_nothing_is_cut_off() -> None:
    names = ["x1.ex.com.", "b.example."]
    for resolver, cutoff in (
        (Resolver(), None),
        (Resolver("flood"), Cutoff(CutoffConfig(enabled=True), clock=lambda: NOW)),
        (Resolver("tunnel"), Cutoff(CutoffConfig(enabled=True, detectors=["dga"]), clock=lambda: NOW)),
    ):
        _, answer = run(resolver, cutoff, names, [NOW])
        assert answer.rcode() == dns.rcode.NXDOMAIN
        assert resolver.asked == names


def test_verdict_texts_are_read_with_a_bounded_expiry() -> None:
    notice = notice_of(verdict_text("dga", 60), NOW, 3600)
    assert notice is not None and (notice.detector, notice.until) == ("dga", NOW + 60)
    assert notice_of(verdict_text("tunnel", 86400 * 30), NOW, 3600).until == NOW + 3600  # type: ignore[union-attr]
    assert notice_of("detect=tunnel until=never", NOW, 600).until == NOW + 600  # type: ignore[union-attr]
    assert notice_of("blocked by policy all", NOW, 600) is None
    assert notice_of("", NOW, 600) is None
