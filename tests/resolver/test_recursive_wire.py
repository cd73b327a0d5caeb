"""The recursion's hand-rendered iterative queries: byte-identical to what dnspython renders for the same query,
and the echo check that decides which answers are ours (ID, QR, opcode, question echoed byte for byte)."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns.resolver.classify import CnameLoop, Lame, ResponseType, classify, cname_target, scrub
from ztdns.resolver.upstream import EDNS_PAYLOAD, IterativeQuery, echoes, randomise_case

labels = st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=6)
rdtypes = st.sampled_from([dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.DS, dns.rdatatype.DNSKEY, 65])


def _dnspython_query(query: IterativeQuery, edns: bool) -> dns.message.Message:
    message = dns.message.make_query(
        query.name, query.rdtype, use_edns=0 if edns else False, want_dnssec=edns, payload=EDNS_PAYLOAD
    )
    message.id = query.id
    message.flags = dns.flags.Flag(0)
    return message


@settings(deadline=None)  # no timing in tests: under load an example may take longer than the default 200 ms
@given(st.integers(0, 0xFFFF), labels, rdtypes, st.booleans())
def test_query_wire_is_what_dnspython_renders(query_id: int, name_labels: list[bytes], rdtype: int, edns: bool) -> None:
    query = IterativeQuery(query_id, dns.name.Name([*name_labels, b""]), dns.rdatatype.RdataType(rdtype))
    wire = query.to_wire(edns)
    assert wire == _dnspython_query(query, edns).to_wire()
    parsed = dns.message.from_wire(wire)
    assert parsed.question[0].name.labels == query.name.labels  # case kept exactly (0x20)
    assert bool(parsed.ednsflags & dns.flags.DO) == edns


def _answer(query: IterativeQuery) -> dns.message.Message:
    return dns.message.make_response(_dnspython_query(query, edns=True))


def _echoed(query: IterativeQuery, response: dns.message.Message) -> bool:
    return echoes(query.to_wire(edns=True), response.to_wire())


def test_echo_needs_same_id_qr_and_exact_case() -> None:
    query = IterativeQuery(4242, dns.name.from_text("wWw.ExAmple.LAB."), dns.rdatatype.A)
    assert _echoed(query, _answer(query))
    assert not _echoed(query, _answer(IterativeQuery(4243, query.name, query.rdtype)))
    assert not _echoed(query, _answer(IterativeQuery(4242, dns.name.from_text("www.example.lab."), query.rdtype)))
    assert not _echoed(query, _answer(IterativeQuery(4242, query.name, dns.rdatatype.AAAA)))
    not_a_response = _answer(query)
    not_a_response.flags &= ~dns.flags.QR
    assert not _echoed(query, not_a_response)
    other_opcode = _answer(query)
    other_opcode.set_opcode(dns.opcode.NOTIFY)
    assert not _echoed(query, other_opcode)
    other_class = _answer(query)
    other_class.question = [dns.rrset.RRset(query.name, dns.rdataclass.CH, query.rdtype)]
    assert not _echoed(query, other_class)
    two_questions = _answer(query)
    two_questions.question.append(dns.rrset.RRset(query.name, dns.rdataclass.IN, dns.rdatatype.MX))
    assert not _echoed(query, two_questions)


def test_errors_without_question_pass_but_data_without_question_does_not() -> None:
    query = IterativeQuery(7, dns.name.from_text("a.lab."), dns.rdatatype.A)
    formerr = dns.message.Message(id=7)
    formerr.flags = dns.flags.QR
    formerr.set_rcode(dns.rcode.FORMERR)
    assert _echoed(query, formerr)
    formerr.set_rcode(dns.rcode.NOERROR)
    assert not _echoed(query, formerr)


def test_0x20_flips_only_letters_each_independently() -> None:
    name = dns.name.from_text("ab-1.xyz9.example.")
    seen: list[set[bytes]] = [set() for _ in range(len(name.to_wire() or b""))]
    for _ in range(200):
        cased = randomise_case(name)
        assert cased == name  # names compare case-insensitively: only the case changed
        wire = cased.to_wire()
        assert wire is not None
        for index, octet in enumerate(wire):
            seen[index].add(bytes([octet]))
    letters = [i for i, c in enumerate(name.to_wire() or b"") if chr(c).isalpha()]
    assert all(len(seen[i]) == 2 for i in letters)  # every letter came out in both cases
    assert all(len(seen[i]) == 1 for i in range(len(seen)) if i not in letters)  # lengths, digits, '-' never


def test_0x20_takes_one_noise_bit_per_octet_and_the_query_id_its_own_bytes() -> None:
    name = dns.name.from_text("Www-1.example.")
    assert randomise_case(name, b"\xff" * 255).labels == (b"wWW-1", b"EXAMPLE", b"")  # letters flipped only
    assert randomise_case(name, b"\x00" * 255).labels == name.labels
    assert randomise_case(name, b"\x00\xff" * 128).labels == (b"WWw-1", b"ExAmPlE", b"")  # octet by octet
    queries = [IterativeQuery.random(name, dns.rdatatype.A, EDNS_PAYLOAD) for _ in range(64)]
    assert len({q.id for q in queries}) > 48 and all(q.name == name for q in queries)


def test_0x20_bits_do_not_come_from_the_random_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # The random module's generator can be reconstructed from its outputs; with it stuck, the case must still vary.
    monkeypatch.setattr(random, "getrandbits", lambda bits: 0)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    name = dns.name.from_text("abcdefghijklmnopqrstuvwxyz.abcdefghijklmnopqrstuvwxyz.example.")
    assert len({randomise_case(name).to_text() for _ in range(4)}) > 1


def test_scrub_drops_out_of_bailiwick_records_and_undoes_0x20() -> None:
    response = dns.message.make_response(dns.message.make_query("www.example.", "A"))
    response.answer = [dns.rrset.from_text("WwW.ExAmple.", 60, "IN", "A", "192.0.2.1")]
    response.authority = [
        dns.rrset.from_text("example.", 60, "IN", "NS", "ns.example."),
        dns.rrset.from_text("evil.", 60, "IN", "NS", "ns.evil."),
    ]
    response.additional = [dns.rrset.from_text("NS.example.", 60, "IN", "A", "192.0.2.53")]
    lower_case = response.authority[0].name
    scrub(response, dns.name.from_text("example."))
    assert [r.name.labels for r in response.answer] == [(b"www", b"example", b"")]
    assert [r.name.to_text() for r in response.authority] == ["example."]
    assert response.authority[0].name is lower_case  # already lower-case: kept as it was
    assert [r.name.labels for r in response.additional] == [(b"ns", b"example", b"")]


_LABEL = st.sampled_from([b"a", b"B", b"ex", b"Ex", b"EXAMPLE", b"example", b"x-1", b"*"])


@settings(deadline=None)  # no timing in tests: under load an example may take longer than the default 200 ms
@given(
    owners=st.lists(st.lists(_LABEL, max_size=4), min_size=1, max_size=6),
    zone=st.lists(_LABEL, max_size=3),
)
def test_scrub_keeps_exactly_the_names_inside_the_zone(owners: list[list[bytes]], zone: list[bytes]) -> None:
    """In bailiwick means Name.is_subdomain (case-insensitive, whole labels); kept names come out lower-cased."""
    zone_name = dns.name.Name([*zone, b""])
    names = [dns.name.Name([*labels, b""]) for labels in owners]
    response = dns.message.make_response(dns.message.make_query("q.", "A"))
    response.authority = [dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1") for name in names]
    scrub(response, zone_name)
    expected = [name.canonicalize().labels for name in names if name.is_subdomain(zone_name)]
    assert [r.name.labels for r in response.authority] == expected


_NAMES = st.builds(
    lambda labels: dns.name.Name([*labels, b"example", b""]),
    st.lists(st.sampled_from([b"a", b"b", b"www"]), max_size=2),
)
_RECORD = st.tuples(_NAMES, st.sampled_from(["A", "AAAA", "CNAME", "NS", "SOA", "DNAME", "TXT"]), _NAMES)


def _rrset(owner: dns.name.Name, rdtype: str, target: dns.name.Name) -> dns.rrset.RRset:
    rdata = {
        "A": "192.0.2.1",
        "AAAA": "2001:db8::1",
        "SOA": f"{target} hostmaster.example. 1 3600 600 86400 300",
        "TXT": '"x"',
    }.get(rdtype, target.to_text())
    return dns.rrset.from_text(owner, 60, "IN", rdtype, rdata)


@settings(deadline=None)  # no timing in tests: under load an example may take longer than the default 200 ms
@given(
    answer=st.lists(_RECORD, max_size=4),
    authority=st.lists(_RECORD, max_size=3),
    additional=st.lists(_RECORD, max_size=3),
    aa=st.booleans(),
    nxdomain=st.booleans(),
    qname=_NAMES,
    qtype=st.sampled_from([dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME, dns.rdatatype.DS]),
)
def test_classify_takes_any_response(
    answer: list[tuple[dns.name.Name, str, dns.name.Name]],
    authority: list[tuple[dns.name.Name, str, dns.name.Name]],
    additional: list[tuple[dns.name.Name, str, dns.name.Name]],
    aa: bool,
    nxdomain: bool,
    qname: dns.name.Name,
    qtype: dns.rdatatype.RdataType,
) -> None:
    """Whatever a server sends: a classification, Lame or CnameLoop; the answer kept is only the question's chain;
    a referral is always downward toward the name."""
    response = dns.message.make_response(dns.message.make_query(qname, qtype))
    response.flags |= dns.flags.AA if aa else 0
    response.set_rcode(dns.rcode.NXDOMAIN if nxdomain else dns.rcode.NOERROR)
    response.answer = [_rrset(*record) for record in answer]
    response.authority = [_rrset(*record) for record in authority]
    response.additional = [_rrset(*record) for record in additional]
    zone = dns.name.from_text("example.")
    try:
        classified = classify(response, zone, qname, qtype, 0.0)
    except (Lame, CnameLoop):
        return
    assert all(r.name.is_subdomain(zone) for r in response.answer)
    if classified.kind is ResponseType.REFERRAL:
        assert classified.referral is not None
        child = classified.referral.zone
        assert child != zone and child.is_subdomain(zone) and qname.is_subdomain(child)
    elif response.answer:
        assert classified.kind is ResponseType.ANSWER
        assert any(r.name == qname or r.rdtype == dns.rdatatype.DNAME for r in response.answer)


def _answering(*records: str) -> dns.message.Message:
    response = dns.message.Message()
    for record in records:
        owner, rdtype, text = record.split(maxsplit=2)
        response.answer.append(dns.rrset.from_text(owner, 300, "IN", rdtype, text))
    return response


def test_cname_target_follows_the_chain_whatever_the_case() -> None:
    name = dns.name.from_text
    chain = _answering("a.test. CNAME B.test.", "b.TEST. CNAME c.test.")
    assert cname_target(chain, name("A.Test."), dns.rdatatype.A) == name("c.test.")
    assert cname_target(chain, name("c.test."), dns.rdatatype.A) is None  # no chain from there
    ended = _answering("a.test. CNAME b.test.", "B.test. A 192.0.2.1")
    assert cname_target(ended, name("a.test."), dns.rdatatype.A) is None  # the data is there
    assert cname_target(ended, name("a.test."), dns.rdatatype.AAAA) == name("b.test.")
    assert cname_target(_answering("a.test. A 192.0.2.1"), name("A.TEST."), dns.rdatatype.A) is None
    assert cname_target(dns.message.Message(), name("a.test."), dns.rdatatype.A) is None
    looped = _answering("a.test. CNAME b.test.", "b.test. CNAME a.test.")
    assert cname_target(looped, name("a.test."), dns.rdatatype.A) is None  # a loop ends nowhere
