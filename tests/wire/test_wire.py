"""The hand-written hot-path parser agrees with dnspython, and never raises on arbitrary bytes."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from ztdns.wire.query import VARIANT_AD, VARIANT_DO, parse_query
from ztdns.wire.records import ttl_offsets


def test_plain_query_key_ignores_case_id_and_payload() -> None:
    a = dns.message.make_query("WWW.Example.COM", "A", use_edns=0, payload=1232)
    b = dns.message.make_query("www.example.com", "A", use_edns=0, payload=4096)
    pa, pb = parse_query(a.to_wire()), parse_query(b.to_wire())
    assert pa is not None and pb is not None
    assert pa.key == pb.key
    assert pa.max_size == 1232 and pb.max_size == 4096
    assert pa.qtype == dns.rdatatype.A


def test_variant_bits_separate_answers() -> None:
    plain = parse_query(dns.message.make_query("x.example", "A").to_wire())
    edns = parse_query(dns.message.make_query("x.example", "A", use_edns=0).to_wire())
    do = parse_query(dns.message.make_query("x.example", "A", want_dnssec=True).to_wire())
    # AD in a query asks for AD in the answer (RFC 6840 §5.8), so it changes the answer's bytes.
    ad = parse_query(dns.message.make_query("x.example", "A", flags=dns.flags.RD | dns.flags.AD).to_wire())
    assert plain is not None and edns is not None and do is not None and ad is not None
    assert len({plain.key, edns.key, do.key, ad.key}) == 4
    assert ad.variant & VARIANT_AD
    assert plain.max_size == 512
    assert do.variant & VARIANT_DO


def test_qtype_bytes_are_not_lowercased() -> None:
    # HTTPS is type 65 = 0x0041 ('A'): lower-casing the whole question would turn it into type 97.
    https = parse_query(dns.message.make_query("x.example", "HTTPS").to_wire())
    other = parse_query(dns.message.make_query("x.example", dns.rdatatype.RdataType.make(97)).to_wire())
    assert https is not None and other is not None
    assert https.key != other.key
    assert https.qtype == 65


def test_unusual_queries_are_left_to_the_full_path() -> None:
    query = dns.message.make_query("x.example", "A")
    data = bytearray(query.to_wire())
    data[2] |= 0x80  # a response
    assert parse_query(bytes(data)) is None
    assert parse_query(query.to_wire()[:-2]) is None  # truncated question
    edns1 = dns.message.make_query("x.example", "A", use_edns=1)
    assert parse_query(edns1.to_wire()) is None
    notify = dns.message.make_query("x.example", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert parse_query(notify.to_wire()) is None


def test_ttl_offsets_skip_opt_and_follow_compression() -> None:
    query = dns.message.make_query("www.example.com", "A", use_edns=0)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "cdn.example.com."))
    response.answer.append(dns.rrset.from_text("cdn.example.com.", 20, "IN", "A", "192.0.2.1", "192.0.2.2"))
    data = response.to_wire()
    found = ttl_offsets(data)
    assert [ttl for _, ttl in found] == [300, 20, 20]
    for offset, ttl in found:
        assert int.from_bytes(data[offset : offset + 4], "big") == ttl


@given(st.binary(max_size=600))
def test_parser_never_raises(data: bytes) -> None:
    parsed = parse_query(data)
    if parsed is None:
        return
    assert parsed.question_end <= len(data)
    try:
        message = dns.message.from_wire(data)
    except Exception:
        return  # e.g. malformed EDNS options: the fast path ignores options, the full path answers FORMERR
    # Where both parse, they see the same question.
    question = message.question[0]
    name_wire = question.name.to_wire()
    assert name_wire is not None
    assert parsed.key[:-1] == name_wire.lower() + data[parsed.name_end : parsed.question_end]
