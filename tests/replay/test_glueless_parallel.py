"""Glueless name servers are looked up in parallel (issue 16): a referral without glue names two servers in other
zones; the exchange holds every query to those zones' servers until both lookups have reached them (one after the
other, the first would wait for ever), and the server of one of them never answers: the answer comes from the
other without waiting for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from replay.harness import FakeClock, MockServer, ReplayExchange, parse, start
from ztdns.model import Question

SLOW, FAST = "192.0.2.5", "192.0.2.6"  # the servers of net. (never answers) and org.

SCENARIO = f"""
SCENARIO example.com. has two glueless name servers: one in net. (whose server is broken), one in org.
SERVER 192.0.2.1
ZONE .
. SOA a.root. hostmaster. 1 3600 600 86400 300
. NS a.root.
a.root. A 192.0.2.1
com. NS ns.com.
ns.com. A 192.0.2.2
net. NS ns.net.
ns.net. A {SLOW}
org. NS ns.org.
ns.org. A {FAST}
END
SERVER 192.0.2.2
ZONE com.
com. SOA ns.com. hostmaster.com. 1 3600 600 86400 300
com. NS ns.com.
ns.com. A 192.0.2.2
example.com. NS ns.broken.net.
example.com. NS ns.working.org.
END
SERVER {SLOW}
ZONE net.
net. SOA ns.net. hostmaster.net. 1 3600 600 86400 300
net. NS ns.net.
ns.net. A {SLOW}
ns.broken.net. A 192.0.2.20
END
SERVER {FAST}
ZONE org.
org. SOA ns.org. hostmaster.org. 1 3600 600 86400 300
org. NS ns.org.
ns.org. A {FAST}
ns.working.org. A 192.0.2.30
END
SERVER 192.0.2.30
ZONE example.com.
example.com. SOA ns.working.org. hostmaster.example.com. 1 3600 600 86400 300
example.com. NS ns.broken.net.
example.com. NS ns.working.org.
www.example.com. A 192.0.2.80
END
"""


class HeldExchange(ReplayExchange):
    """Queries to the two name servers' zones wait until both zones have been asked; SLOW never answers."""

    def __init__(self, servers: dict[str, MockServer], clock: FakeClock) -> None:
        super().__init__(servers, clock)
        self.events: list[tuple[str, str]] = []  # ("asked" | "answered", server address)
        self.both_asked = asyncio.Event()
        self.slow_cancelled = False

    async def exchange(self, query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        if address not in (SLOW, FAST):
            return await super().exchange(query, address, port, timeout, tcp)
        self.events.append(("asked", address))
        if {SLOW, FAST} <= {asked for _, asked in self.events}:
            self.both_asked.set()
        await self.both_asked.wait()
        if address == SLOW:
            try:
                await asyncio.Event().wait()  # a server that never answers (its timeout is far away)
            except asyncio.CancelledError:
                self.slow_cancelled = True
                raise
        answer = await super().exchange(query, address, port, timeout, tcp)
        self.events.append(("answered", address))
        return answer


def test_glueless_name_servers_are_looked_up_at_once(tmp_path: Path) -> None:
    replay = start(parse(SCENARIO), tmp_path)
    exchange = HeldExchange(replay.exchange.servers, replay.clock)
    replay.resolver.exchange = exchange

    async def ask() -> dns.message.Message | None:
        async with asyncio.timeout(5):  # one lookup after the other would hold the first query for ever
            resolution = await replay.ask(Question(dns.name.from_text("www.example.com."), dns.rdatatype.A, 1))
        # The broken name server's lookup is still waiting for its server: the answer did not wait for it.
        assert not exchange.slow_cancelled and ("answered", SLOW) not in exchange.events
        await replay.resolver.close()
        await asyncio.sleep(0)
        assert exchange.slow_cancelled  # close() ends lookups still under way
        return resolution.response

    response = asyncio.run(ask())
    assert response is not None and response.rcode() == dns.rcode.NOERROR
    assert [rdata.to_text() for rrset in response.answer for rdata in rrset] == ["192.0.2.80"]
    first_answer = exchange.events.index(("answered", FAST))
    assert {address for kind, address in exchange.events[:first_answer] if kind == "asked"} == {SLOW, FAST}
    # In parallel, yet nothing asked twice (a name's AAAA lookup starts after its A and finds its zone known).
    assert len(exchange.log) == len(set(exchange.log)), exchange.log


def test_all_glueless_name_servers_broken_fail_without_leftovers(tmp_path: Path) -> None:
    scenario = parse(SCENARIO)
    scenario.servers[SLOW].down = scenario.servers[FAST].down = True  # every query to them times out
    replay = start(scenario, tmp_path)

    async def ask() -> None:
        resolution = await replay.ask(Question(dns.name.from_text("www.example.com."), dns.rdatatype.A, 1))
        assert resolution.response is None and resolution.reason is not None
        assert "example.com.: no name server address" in resolution.reason.text
        assert not replay.resolver._lookups  # every lookup ended with the answer: none left running

    asyncio.run(ask())
    asked = {address for address, _, _ in replay.exchange.log}
    assert {SLOW, FAST} <= asked and "192.0.2.30" not in asked
