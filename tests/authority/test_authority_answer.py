"""RFC 1034 answering from a zone, sans-IO: AA, referrals with glue, NODATA vs NXDOMAIN, wildcards, CNAME
chains."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from authority_lab import ORIGIN, ZONE_TEXT, signed_zone
from ztdns.authority.answer import answer
from ztdns.authority.zone import Zone

ZONE = Zone.from_text(ZONE_TEXT, ORIGIN)


def ask(name: str, rdtype: str, zone: Zone | None = ZONE) -> dns.message.Message:
    return answer(dns.message.make_query(name, rdtype), zone)


def names(rrsets: list[dns.rrset.RRset]) -> list[tuple[str, str]]:
    return [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in rrsets]


def test_positive_answer_is_authoritative() -> None:
    response = ask("www.corp.internal.", "AAAA")
    assert response.flags & dns.flags.AA
    assert names(response.answer) == [("www.corp.internal.", "AAAA")]


def test_nodata_and_nxdomain_carry_soa_with_negative_ttl() -> None:
    nodata = ask("www.corp.internal.", "MX")
    nxdomain = ask("nope.corp.internal.", "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    for response in (nodata, nxdomain):
        assert names(response.authority) == [("corp.internal.", "SOA")]
        assert response.authority[0].ttl == 60  # min(SOA TTL 300, MINIMUM 60)


def test_empty_non_terminal_is_nodata_not_nxdomain() -> None:
    response = ask("b.c.corp.internal.", "A")
    assert response.rcode() == dns.rcode.NOERROR and not response.answer


def test_referral_has_ns_and_only_in_bailiwick_glue() -> None:
    response = ask("host.sub.corp.internal.", "A")
    assert not response.flags & dns.flags.AA
    assert names(response.authority) == [("sub.corp.internal.", "NS")]
    assert names(response.additional) == [("ns.sub.corp.internal.", "A")]


def test_ds_query_at_a_cut_is_answered_by_the_parent_side() -> None:
    response = ask("sub.corp.internal.", "DS")
    assert response.flags & dns.flags.AA
    assert names(response.authority) == [("corp.internal.", "SOA")]


def test_cname_chain_is_followed_inside_the_zone_only() -> None:
    chain = ask("chain.corp.internal.", "A")
    assert names(chain.answer) == [
        ("chain.corp.internal.", "CNAME"),
        ("alias.corp.internal.", "CNAME"),
        ("www.corp.internal.", "A"),
    ]
    outside = ask("outside.corp.internal.", "A")
    assert names(outside.answer) == [("outside.corp.internal.", "CNAME")]


def test_wildcard_synthesis_and_its_limits() -> None:
    synthesised = ask("x.y.wild.corp.internal.", "A")
    assert names(synthesised.answer) == [("x.y.wild.corp.internal.", "A")]
    assert ask("x.wild.corp.internal.", "MX").rcode() == dns.rcode.NOERROR  # wildcard NODATA
    # The wildcard does not match the name it hangs from, nor names beside an existing one (RFC 4592 §2.2).
    assert ask("wild.corp.internal.", "A").rcode() == dns.rcode.NOERROR
    assert not ask("wild.corp.internal.", "A").answer
    assert ask("c.corp.internal.", "TXT").rcode() == dns.rcode.NOERROR  # empty non-terminal, no wildcard here


def test_names_outside_served_zones_are_refused() -> None:
    assert ask("example.com.", "A", None).rcode() == dns.rcode.REFUSED


def test_signed_answers_validate_with_dnspython(tmp_path: Path) -> None:
    import dns.dnssec

    served = signed_zone(tmp_path)
    assert served.view is not None and served.keys is not None
    dnskey = served.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
    keys = {ORIGIN: dnskey}
    for name, rdtype in [
        ("www", "A"),
        ("nope", "A"),
        ("x.wild", "A"),
        ("x.wild", "MX"),
        ("b.c", "A"),
        ("@", "DNSKEY"),
    ]:
        qname = ORIGIN if name == "@" else dns.name.from_text(name, ORIGIN)
        query = dns.message.make_query(qname, rdtype, want_dnssec=True)
        response = answer(query, served.zone, served.view)
        sections = response.answer + response.authority
        data = [r for r in sections if r.rdtype != dns.rdatatype.RRSIG]
        sigs = {(r.name, r.covers): r for r in sections if r.rdtype == dns.rdatatype.RRSIG}
        assert data
        for rrset in data:
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], keys)  # type: ignore[arg-type]
