"""Every case of the lab (``ztdns lab``, tests/test_recursive_lab.py) replayed without root: the lab's own zones,
built and signed in memory, served by mock authoritative servers at the lab's addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from replay.harness import FakeClock, MockServer, ReplayExchange, outcome
from ztdns.config.model import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import SUPPORTED_ALGORITHMS, Validator
from ztdns.lab import zones
from ztdns.lab.zones import CASES, Case
from ztdns.resolver import Question
from ztdns.resolver.recursive import RecursiveResolver

ADDRESSES = {server: f"10.53.0.{index + 1}" for index, server in enumerate(zones.SERVERS)}


def lab_resolver(
    tmp_path: Path, clock: FakeClock, algorithms: frozenset[int] = SUPPORTED_ALGORITHMS, **overrides: object
) -> tuple[RecursiveResolver, ReplayExchange]:
    lab = zones.build(ADDRESSES, now=clock.now)
    servers = {address: MockServer(address) for address in ADDRESSES.values()}
    for server, served in lab.zones.items():
        for origin, text in served:
            zone = dns.zone.from_text(text, origin=origin, relativize=False)
            servers[ADDRESSES[server]].zones[dns.name.from_text(origin)] = zone
    hints = tmp_path / "hints.zone"
    hints.write_text(lab.root_hints)
    exchange = ReplayExchange(servers, clock)
    config = RecursionConfig(root_hints=str(hints), **overrides)
    resolver = RecursiveResolver(config, exchange=exchange, clock=clock)
    resolver.validator = Validator(resolver, TrustAnchors.load(texts=[lab.root_ds]), clock=clock, algorithms=algorithms)
    return resolver, exchange


def _question(case: Case) -> Question:
    return Question(dns.name.from_text(case.qname), dns.rdatatype.from_text(case.qtype), 1, True, False)


@pytest.mark.parametrize("minimise", [True, False])
def test_every_lab_case(tmp_path: Path, minimise: bool) -> None:
    clock = FakeClock()
    resolver, exchange = lab_resolver(tmp_path, clock, qname_minimisation=minimise)

    async def run() -> None:
        for case in CASES:
            got = await resolver.resolve(_question(case))
            expected = (case.rcode, case.secure, int(case.ede) if case.ede is not None else None)
            assert outcome(got)[:3] == expected, (case, got.reason)
        # Warm: the same answers from the cache, without new upstream queries.
        before = len(exchange.log)
        for case in CASES:
            if case.rcode != "SERVFAIL":
                await resolver.resolve(_question(case))
        assert len(exchange.log) == before

    asyncio.run(run())


def test_bogus_reason_names_zone_and_record(tmp_path: Path) -> None:
    resolver, _ = lab_resolver(tmp_path, FakeClock())
    resolution = asyncio.run(resolver.resolve(Question(dns.name.from_text("www.bogus.lab."), 1, 1, True)))
    assert resolution.reason is not None
    text = "bogus.lab.: www.bogus.lab. A: signature does not verify"
    assert resolution.reason.text == f"{text} (from {ADDRESSES[zones.SLD]})"  # the one server, asked once
    assert resolution.security == "bogus"


def test_query_limit_stops_resolution(tmp_path: Path) -> None:
    resolver, _ = lab_resolver(tmp_path, FakeClock(), max_queries=2)
    resolution = asyncio.run(resolver.resolve(_question(CASES[0])))
    assert resolution.response is None
    assert resolution.reason is not None and "limit" in resolution.reason.text


def test_rsasha1_is_validated_when_switched_on(tmp_path: Path) -> None:
    """Off by default (insecure, EDE 1: the lab case); with [dnssec] algorithms naming it, secure as in Unbound."""
    question = Question(dns.name.from_text("www.rsasha1.lab."), 1, 1, True)
    resolver, _ = lab_resolver(tmp_path, FakeClock(), algorithms=SUPPORTED_ALGORITHMS | {5})
    assert outcome(asyncio.run(resolver.resolve(question)))[:3] == ("NOERROR", True, None)
