"""Recursion and validation against the lab (real Knot DNS servers in a private network namespace),
and differential checks against Unbound configured with the same root hints and trust anchor."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from fixtures.labcases import answer_set, generated_queries, known_difference
from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab, missing_tools
from ztdns.lab.unbound import Unbound
from ztdns.lab.unbound import missing as unbound_missing
from ztdns.lab.zones import CASES, Case
from ztdns.model import Question, Resolution
from ztdns.resolver.recursive import RecursiveResolver

_problem = netns.available() or missing_tools()
pytestmark = [pytest.mark.skipif(_problem is not None, reason=_problem or ""), pytest.mark.slow, pytest.mark.root]


@pytest.fixture
def lab(signed_lab: Lab) -> Lab:
    return signed_lab


@pytest.fixture
def loop(lab_loop: NetnsLoop) -> NetnsLoop:
    return lab_loop


def _resolver(lab: Lab, **overrides: object) -> RecursiveResolver:
    config = RecursionConfig(root_hints=str(lab.root_hints), allow_query_localhost=True, **overrides)
    resolver = RecursiveResolver(config)
    resolver.validator = Validator(resolver, TrustAnchors.load(texts=(), files=[lab.trust_anchor]))
    return resolver


def _question(case: Case, cd: bool = False) -> Question:
    return Question(dns.name.from_text(case.qname), dns.rdatatype.from_text(case.qtype), 1, True, cd)


def _outcome(resolution: Resolution) -> tuple[str, bool, int | None]:
    response = resolution.response
    rcode = dns.rcode.to_text(response.rcode()) if response is not None else "SERVFAIL"
    secure = bool(response is not None and response.flags & dns.flags.AD)
    return rcode, secure, int(resolution.reason.ede) if resolution.reason else None


@pytest.mark.parametrize("minimise", [True, False])
def test_every_lab_case(lab: Lab, loop: NetnsLoop, minimise: bool) -> None:
    resolver = _resolver(lab, qname_minimisation=minimise)
    for case in CASES:
        got = loop.run(resolver.resolve(_question(case)))
        expected = (case.rcode, case.secure, int(case.ede) if case.ede is not None else None)
        assert _outcome(got) == expected, (case, got.reason)
    # Warm: the same answers from the cache, without new upstream queries.
    before = resolver.upstream_queries
    for case in CASES:
        if case.rcode != "SERVFAIL":
            loop.run(resolver.resolve(_question(case)))
    assert resolver.upstream_queries == before


def test_bogus_reason_names_zone_and_record(lab: Lab, loop: NetnsLoop) -> None:
    resolver = _resolver(lab)
    bogus = next(c for c in CASES if c.qname == "www.bogus.lab.")
    resolution = loop.run(resolver.resolve(_question(bogus)))
    assert resolution.reason is not None
    text = resolution.reason.text
    assert text.startswith("bogus.lab.: www.bogus.lab. A: signature does not verify (from "), text
    assert resolution.security == "bogus"


def test_reason_texts_show_names_in_lower_case_not_the_0x20_case_sent(lab: Lab, loop: NetnsLoop) -> None:
    dead = next(c for c in CASES if c.qname == "www.dead.lab.")
    for _ in range(5):  # a fresh resolver each time: new random case (all lower by chance: 1 in 8 each)
        resolution = loop.run(_resolver(lab).resolve(_question(dead)))
        assert resolution.reason is not None
        assert "referral from dead.lab. to lab. is not downward" in resolution.reason.text, resolution.reason.text


def test_no_ede_for_names_under_a_negative_trust_anchor(lab: Lab, loop: NetnsLoop) -> None:
    config = RecursionConfig(root_hints=str(lab.root_hints), allow_query_localhost=True)
    resolver = RecursiveResolver(config)
    anchors = TrustAnchors.load(texts=(), files=[lab.trust_anchor], negative=["bogus.lab."])
    resolver.validator = Validator(resolver, anchors)
    bogus = next(c for c in CASES if c.qname == "www.bogus.lab.")
    for _ in range(2):  # fresh, then cached
        resolution = loop.run(resolver.resolve(_question(bogus)))
        assert _outcome(resolution) == ("NOERROR", False, None), resolution.reason


def test_checking_disabled_returns_unvalidated_data(lab: Lab, loop: NetnsLoop) -> None:
    resolver = _resolver(lab)
    bogus = next(c for c in CASES if c.qname == "www.bogus.lab.")
    resolution = loop.run(resolver.resolve(_question(bogus, cd=True)))
    assert resolution.response is not None
    assert resolution.response.rcode() == dns.rcode.NOERROR
    assert not resolution.response.flags & dns.flags.AD
    assert any(r.rdtype == dns.rdatatype.A for r in resolution.response.answer)


def test_query_limit_stops_resolution(lab: Lab, loop: NetnsLoop) -> None:
    resolver = _resolver(lab, max_queries=2)
    resolution = loop.run(resolver.resolve(_question(CASES[0])))
    assert resolution.response is None
    assert resolution.reason is not None and "limit" in resolution.reason.text


def test_localhost_is_not_queried_by_default(lab: Lab, loop: NetnsLoop) -> None:
    resolver = RecursiveResolver(RecursionConfig(root_hints=str(lab.root_hints)))
    resolution = loop.run(resolver.resolve(_question(CASES[0])))
    assert resolution.response is None
    assert resolver.upstream_queries == 0


@pytest.mark.skipif(unbound_missing() is not None, reason=unbound_missing() or "")
def test_agrees_with_unbound(lab: Lab, loop: NetnsLoop) -> None:
    resolver = _resolver(lab)
    queries = [(c.qname, c.qtype) for c in CASES] + generated_queries(120)
    with Unbound(lab, address="127.0.0.1"):

        async def unbound(qname: str, qtype: str) -> dns.message.Message:
            query = dns.message.make_query(qname, qtype, want_dnssec=True)
            return await dns.asyncquery.udp(query, "127.0.0.1", 5)

        disagreements = []
        for qname, qtype in queries:
            ours = loop.run(
                resolver.resolve(Question(dns.name.from_text(qname), dns.rdatatype.from_text(qtype), 1, True))
            )
            theirs = loop.run(unbound(qname, qtype))
            ours_rcode, ours_ad, _ = _outcome(ours)
            mine = (
                ours_rcode,
                ours_ad,
                answer_set(ours.response) if ours.response and ours_rcode != "SERVFAIL" else set(),
            )
            other = (
                dns.rcode.to_text(theirs.rcode()),
                bool(theirs.flags & dns.flags.AD),
                answer_set(theirs) if theirs.rcode() != dns.rcode.SERVFAIL else set(),
            )
            if mine != other and not known_difference(qname, mine, other):
                disagreements.append((qname, qtype, mine, other))
    assert disagreements == [], "\n".join(map(str, disagreements))
