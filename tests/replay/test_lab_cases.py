"""Every case of the lab (``ztdns lab``, tests/resolver/test_recursive_lab.py) replayed without root: the lab's
own zones, built and signed in memory, served by mock authoritative servers at the lab's addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from fixtures.labcases import covered_by_same_span
from replay.harness import FakeClock, MockServer, ReplayExchange, outcome
from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import SUPPORTED_ALGORITHMS, Validator
from ztdns.lab import zones
from ztdns.lab.zones import CASES, Case
from ztdns.model import Question, Resolution
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


@pytest.mark.parametrize(
    ("qname", "ahead"),
    [
        ("www.secure.lab.", [(".", "DNSKEY"), ("lab.", "DNSKEY"), ("secure.lab.", "DNSKEY")]),
        ("www.insecure.lab.", [("insecure.lab.", "DS")]),
    ],
)
def test_what_validation_needs_is_asked_beside_the_queries(
    tmp_path: Path, qname: str, ahead: list[tuple[str, str]]
) -> None:
    """Unbound's prefetch-key: a referral carrying a DS starts the child zone's DNSKEY query at once, so it is
    under way while the query to the child's servers is, not asked after it; and it is asked once. The root's
    keys (the trust anchor's) are asked beside the first query to the root's servers; a referral from a signed
    zone to an unsigned one (an NSEC/NSEC3 proof instead of a DS) starts the DS query the validator will make."""
    resolver, exchange = lab_resolver(tmp_path, FakeClock())
    events: list[tuple[str, dns.name.Name, int]] = []
    replay = exchange.exchange

    async def watched(query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        question = dns.message.from_wire(query).question[0]
        name = question.name.canonicalize()
        events.append(("asked", name, question.rdtype))
        try:
            return await replay(query, address, port, timeout, tcp)
        finally:
            events.append(("answered", name, question.rdtype))

    exchange.exchange = watched  # type: ignore[method-assign]
    resolution = asyncio.run(resolver.resolve(Question(dns.name.from_text(qname), dns.rdatatype.A, 1, True)))
    assert outcome(resolution)[0] == "NOERROR"
    answered = events.index(("answered", dns.name.from_text(qname), dns.rdatatype.A))
    for zone, rdtype in ahead:
        query = (dns.name.from_text(zone), dns.rdatatype.from_text(rdtype))
        assert ("asked", *query) in events[:answered]
        assert sum(event[1:] == query for event in events if event[0] == "asked") == 1


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


def test_aggressive_nsec_answers_from_cached_denials(tmp_path: Path) -> None:
    """RFC 8198 (ported from test_serve_lab.py): once a validated NSEC/NSEC3 denial is cached, other names it
    covers are answered without any upstream query; wildcards and opt-out spans are still asked."""
    resolver, exchange = lab_resolver(tmp_path, FakeClock())

    def ask(name: str, rdtype: str = "A") -> dns.message.Message:
        question = Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), 1, True)
        response = asyncio.run(resolver.resolve(question)).response
        assert response is not None
        return response

    assert ask("nxa.secure.lab.").flags & dns.flags.AD
    nsec3_first = ask("nxa.nsec3.lab.")
    assert nsec3_first.rcode() == dns.rcode.NXDOMAIN and nsec3_first.flags & dns.flags.AD
    assert ask("www.secure.lab.", "MX").flags & dns.flags.AD  # NODATA: the NSEC at www
    before, aggressive = len(exchange.log), resolver.aggressive_answers
    answers = [
        ask("nxb.secure.lab."),
        ask("nxc.secure.lab.", "TXT"),
        ask(covered_by_same_span(nsec3_first, "nxa.nsec3.lab.")),
    ]
    nodata = ask("www.secure.lab.", "SRV")
    for response in answers:
        assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AD
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AD
    assert len(exchange.log) == before and resolver.aggressive_answers - aggressive == 4
    opt_out = ask("nxa.optout.lab.")
    assert opt_out.rcode() == dns.rcode.NXDOMAIN and not opt_out.flags & dns.flags.AD
    before = len(exchange.log)
    assert ask(covered_by_same_span(opt_out, "nxa.optout.lab.")).rcode() == dns.rcode.NXDOMAIN
    assert len(exchange.log) > before  # insecure span: asked upstream


@pytest.mark.parametrize(("zone", "primer"), [("secure.lab.", "www.secure.lab."), ("nsec3.lab.", "nx.nsec3.lab.")])
def test_aggressive_wildcard_nodata(tmp_path: Path, zone: str, primer: str) -> None:
    """RFC 8198 §5.3 (ported from test_serve_lab.py): after a wildcard answer, another name under it asked for a
    type the wildcard lacks is a NODATA from the denials held; a type it holds is still asked."""
    resolver, exchange = lab_resolver(tmp_path, FakeClock())

    def ask(name: str, rdtype: str = "A") -> Resolution:
        return asyncio.run(
            resolver.resolve(Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), 1, True))
        )

    assert outcome(ask(primer, "MX"))[1]
    assert outcome(ask(f"b.wild.{zone}"))[:2] == ("NOERROR", True)
    before = len(exchange.log)
    nodata = ask(f"z.wild.{zone}", "MX")
    assert outcome(nodata)[:2] == ("NOERROR", True) and nodata.response is not None and not nodata.response.answer
    assert len(exchange.log) == before
    assert outcome(ask(f"z.wild.{zone}"))[:2] == ("NOERROR", True)
    assert len(exchange.log) > before
