"""Recursion settings that operators and test rigs need (issue 16 #8): the payload size advertised upstream,
outgoing source addresses, address families; each also has a scenario where it changes an answer."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.message
import dns.name
import pydantic
import pytest

from replay.harness import parse, scenario_files, start
from ztdns.config.dnssec import DnssecConfig
from ztdns.config.resolver import RecursionConfig
from ztdns.model import Question
from ztdns.resolver.upstream import IterativeQuery, NetworkExchange


def _basic(tmp_path: Path, **config: object) -> list[int]:
    scenario = parse(next(p for p in scenario_files() if p.stem == "basic").read_text())
    scenario.config.update(config)
    replay = start(scenario, tmp_path)
    asyncio.run(replay.ask(Question(dns.name.from_text("www.example.com."), 1, 1)))
    return replay.exchange.payloads


def test_edns_payload_is_what_queries_advertise(tmp_path: Path) -> None:
    assert set(_basic(tmp_path)) == {1232}
    assert set(_basic(tmp_path, edns_payload=4000)) == {4000}


def test_outgoing_address_is_the_source_of_queries() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    exchange = NetworkExchange(sources=("2001:db8::1", "127.0.0.2"))  # the IPv4 one is used for an IPv4 server
    query = IterativeQuery.random(dns.name.from_text("example."), dns.rdatatype.A, 1232).to_wire(True)

    async def ask() -> None:
        with pytest.raises(TimeoutError):
            await exchange.exchange(query, "127.0.0.1", server.getsockname()[1], 0.5)

    asyncio.run(ask())
    wire, peer = server.recvfrom(512)
    server.close()
    assert wire == query and peer[0] == "127.0.0.2"


def test_settings_are_checked() -> None:
    with pytest.raises(pydantic.ValidationError, match="both off"):
        RecursionConfig(ipv4=False, ipv6=False)
    with pytest.raises(pydantic.ValidationError, match="not-an-address"):
        RecursionConfig(outgoing_addresses=["not-an-address"])
    with pytest.raises(pydantic.ValidationError, match="GOST"):
        DnssecConfig(algorithms=["ECDSAP256SHA256", "GOST"])
    assert DnssecConfig(algorithms=["rsasha1", "ED25519"]).algorithm_numbers() == frozenset({5, 15})
    assert 5 not in DnssecConfig().algorithm_numbers() and 13 in DnssecConfig().algorithm_numbers()
