"""The hand-written encoder against dnspython, byte for byte: responses (ztdns.wire.render against dnspython's
Renderer without shuffling) and RRSIG signed data (ztdns.dnssec.signed against _make_rrsig_signature_data)."""

from __future__ import annotations

import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.renderer
import dns.rrset
import pytest
from dns.rdtypes.ANY.RRSIG import RRSIG
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns.dnssec.signed import signed_data
from ztdns.wire.encode import Unencodable, canonical_rdata, encoder
from ztdns.wire.render import encode, render


def dnspython_wire(message: dns.message.Message, max_size: int = 65535) -> bytes:
    """``Message.to_wire(max_size=...)`` step by step, with ``want_shuffle=False``."""
    renderer = dns.renderer.Renderer(message.id, message.flags, max_size, message.origin)
    opt_reserve = message._compute_opt_reserve()
    renderer.reserve(opt_reserve)
    for question in message.question:
        renderer.add_question(question.name, question.rdtype, question.rdclass)
    for section, rrsets in (
        (dns.renderer.ANSWER, message.answer),
        (dns.renderer.AUTHORITY, message.authority),
        (dns.renderer.ADDITIONAL, message.additional),
    ):
        for rrset in rrsets:
            renderer.add_rrset(section, rrset, want_shuffle=False)
    renderer.release_reserved()
    if message.opt is not None:
        renderer.add_opt(message.opt, message.pad, opt_reserve, 0)
    renderer.write_header()
    wire: bytes = renderer.get_wire()
    return wire


# One rdata of every type the encoder writes itself, and some it leaves to dnspython; mixed case throughout.
RECORDS = [
    ("A", "192.0.2.1"),
    ("A", "0.0.0.0"),
    ("AAAA", "2001:db8::1"),
    ("AAAA", "::ffff:192.0.2.1"),
    ("AAAA", "::"),
    ("NS", "Ns1.Example.COM."),
    ("CNAME", "Target.Example.com."),
    ("PTR", "Host.EXAMPLE.net."),
    ("DNAME", "Other.Example.ORG."),
    ("MX", "10 Mail.Example.com."),
    ("SOA", "Ns1.Example.com. HostMaster.example.COM. 2024010101 7200 3600 1209600 300"),
    ("TXT", '"v=spf1 -all" "" "second string"'),
    ("SPF", '"v=spf1 -all"'),
    ("SRV", "0 5 443 Srv.Example.com."),
    ("RRSIG", "A 13 3 300 20300101000000 20200101000000 12345 Example.COM. AAECAwQFBgcICQ=="),
    ("NSEC", "B.Example.com. A NS SOA MX RRSIG NSEC DNSKEY TYPE65534"),
    ("NSEC3", "1 1 0 - 2T7B4G4VSA5SMI47K61MV5BV1A22BOJR A RRSIG"),
    ("NSEC3", "1 0 10 AABBCCDD 2T7B4G4VSA5SMI47K61MV5BV1A22BOJR"),
    ("NSEC3PARAM", "1 0 0 -"),
    ("DS", "12345 13 2 " + "ab" * 32),
    ("CDS", "12345 13 2 " + "cd" * 32),
    ("DNSKEY", "257 3 13 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="),
    ("CDNSKEY", "257 3 13 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="),
    ("CAA", '0 issue "ca.Example.net"'),
    ("TLSA", "3 1 1 " + "ef" * 32),
    ("SSHFP", "4 2 " + "12" * 32),
    # Left to dnspython rdata by rdata (they never compress):
    ("HINFO", '"CPU" "OS"'),
    ("NAPTR", '100 10 "U" "E2U+sip" "!^.*$!sip:x@Example.com!" .'),
    ("HTTPS", '1 Svc.Example.com. alpn="h2,h3" port=443'),
    ("SVCB", "0 Alias.Example.com."),
    ("LOC", "52 22 23.000 N 4 53 32.000 E -2.00m 0.00m 10000m 10m"),
    ("URI", '10 1 "https://Example.com/"'),
    ("AFSDB", "1 Afs.Example.com."),
    ("KX", "10 Kx.Example.com."),
    ("RP", "Mbox.Example.com. Txt.Example.com."),
    ("SMIMEA", "3 1 1 " + "ef" * 32),
    ("TYPE65280", r"\# 3 010203"),
]


def rrset(owner: str, rdtype: str, *texts: str, ttl: int = 300, rdclass: str = "IN") -> dns.rrset.RRset:
    return dns.rrset.from_text(owner, ttl, rdclass, rdtype, *texts)


def response(qname: str = "Www.Example.com.", qtype: str = "A", *, edns: bool = True) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, want_dnssec=edns, use_edns=edns)
    return dns.message.make_response(query)


def assert_same(message: dns.message.Message) -> bytes:
    """The fast path takes the message (no fallback) and writes dnspython's bytes."""
    wire = encode(message)
    assert wire == dnspython_wire(message)
    assert render(message, max_size=65535) == wire
    return wire


@pytest.mark.parametrize(("rdtype", "text"), RECORDS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(RECORDS)])
def test_every_type_renders_and_canonicalises_like_dnspython(rdtype: str, text: str) -> None:
    message = response()
    # Owner and rdata names share suffixes in other cases, so the rdata names compress (or must not).
    message.answer.append(rrset("Www.EXAMPLE.com.", rdtype, text))
    message.authority.append(rrset("example.com.", rdtype, text))
    message.additional.append(rrset("Deep.Sub.example.com.", rdtype, text))
    assert_same(message)
    (rd,) = rrset("Www.EXAMPLE.com.", rdtype, text)
    assert canonical_rdata(rd) == rd.to_digestable()


def test_all_types_in_one_message() -> None:
    message = response()
    for index, (rdtype, text) in enumerate(RECORDS):
        message.answer.append(rrset(f"N{index}.Example.com.", rdtype, text))
    message.use_edns(0, dns.flags.DO, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.BLOCKED, "rule Ünï")])
    assert_same(message)


def test_a_type_dnspython_compresses_goes_to_dnspython_whole() -> None:
    message = response()
    message.answer.append(rrset("Www.Example.com.", "CNAME", "Host.Example.com."))
    message.answer.append(rrset("Www.Example.com.", "A", "Host.Example.com. 1", rdclass="CH"))  # CH A compresses
    with pytest.raises(Unencodable):
        encode(message)
    assert render(message) == message.to_wire(max_size=65535)  # no shuffling in single-record RRsets


def test_multi_record_rrsets_keep_their_order() -> None:
    message = response()
    message.answer.append(rrset("Www.Example.com.", "A", *(f"192.0.2.{i}" for i in range(1, 40))))
    message.answer.append(rrset("Www.Example.com.", "NS", *(f"Ns{i}.Example.com." for i in range(20))))
    assert_same(message)


def test_compression_corner_cases() -> None:
    message = response("Example.COM.", "ANY")
    long_name = ".".join(["A" * 63, "b" * 63, "C" * 63, "d" * 61]) + "."  # 255 octets on the wire
    message.answer.append(rrset(".", "NS", "A.Root-Servers.net."))
    message.answer.append(rrset(".", "SOA", ". . 1 2 3 4 5"))
    message.answer.append(rrset(long_name, "CNAME", long_name.upper()))
    message.answer.append(rrset("com.", "NS", "example.com."))  # a suffix of an earlier name
    message.answer.append(rrset("a.B.c.example.com.", "MX", "10 C.example.COM."))
    message.answer.append(rrset("x.example.com.", "DNAME", "A.b.C.example.com."))  # shares suffix, not compressed
    message.answer.append(rrset("*.example.com.", "SRV", "1 1 1 *.example.com."))
    message.answer.append(rrset("\\000.\\255\\.x.example.com.", "NSEC", "\\000.\\255\\.X.example.com. A"))
    assert_same(message)


@pytest.mark.parametrize("pad", range(0x3F80, 0x4020, 7))
def test_names_around_the_pointer_limit(pad: int) -> None:
    """dnspython registers a suffix only at offsets <= 0x3FFF: a name straddling the limit has some suffixes
    registered and some not."""
    message = response("example.com.")
    filler = pad - len(dnspython_wire(message)) - 12 - 10
    # Opaque filler up to ``pad``: TXT strings of up to 255 octets, one record (owner compressed to 2 octets).
    strings = []
    while filler > 0:
        size = min(filler, 256)
        strings.append('"' + "x" * (size - 1) + '"')
        filler -= size
    message.answer.append(rrset("example.com.", "TXT", " ".join(strings)))
    for owner in ("Aa.Bb.Cc.Dd.Example.COM.", "Ee.Dd.example.com.", "cc.DD.Example.Com.", "aa.bb.cc.dd.example.com."):
        message.answer.append(rrset(owner, "CNAME", "zz." + owner))
        message.answer.append(rrset(owner, "A", "192.0.2.1"))
    assert_same(message)


@pytest.mark.parametrize(
    "options",
    [
        [],
        [dns.edns.EDEOption(dns.edns.EDECode.BLOCKED)],
        [dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "example.com: A: signature does not verify")],
        [
            dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, "ünknown client"),
            dns.edns.ECSOption("192.0.2.0", 24),
            dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8),
        ],
    ],
)
@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.BADVERS])
@pytest.mark.parametrize("ednsflags", [0, dns.flags.DO])
def test_opt_record(options: list[dns.edns.Option], rcode: dns.rcode.Rcode, ednsflags: int) -> None:
    message = response()
    message.use_edns(0, ednsflags, 1232, options=options)
    message.set_rcode(rcode)  # BADVERS: the upper bits go to the OPT TTL
    message.authority.append(rrset("example.com.", "SOA", "ns.example.com. h.example.com. 1 2 3 4 5"))
    assert_same(message)


def test_without_edns_and_without_question() -> None:
    message = response(edns=False)
    message.use_edns(False)
    message.answer.append(rrset("Www.Example.com.", "A", "192.0.2.1"))
    assert_same(message)
    message.question = []
    assert_same(message)


def test_empty_rrset_is_one_record_with_empty_rdata() -> None:
    message = response()
    message.answer.append(dns.rrset.RRset(dns.name.from_text("Www.example.com."), dns.rdataclass.IN, dns.rdatatype.A))
    assert_same(message)


def test_too_big_like_dnspython() -> None:
    message = response()
    big = " ".join(['"' + "x" * 255 + '"'] * 60)
    message.answer.append(rrset("Www.Example.com.", "TXT", *(f'{big} "{i}"' for i in range(5))))
    with pytest.raises(dns.exception.TooBig):
        message.to_wire(max_size=65535)
    with pytest.raises(dns.exception.TooBig):
        render(message, max_size=65535)
    message.answer[0] = rrset("Www.Example.com.", "TXT", big)
    assert len(render(message, max_size=65535)) > 1232
    with pytest.raises(dns.exception.TooBig):
        message.to_wire()  # request payload 1232 (use_edns in make_response)
    with pytest.raises(dns.exception.TooBig):
        render(message)


def test_relative_names_fail_as_in_dnspython() -> None:
    message = response()
    message.answer.append(dns.rrset.from_text(dns.name.from_text("www", None), 300, "IN", "A", "192.0.2.1"))
    with pytest.raises(dns.name.NeedAbsoluteNameOrOrigin):
        message.to_wire()
    with pytest.raises(dns.name.NeedAbsoluteNameOrOrigin):
        render(message)


def test_encoders_are_chosen_by_class() -> None:
    (ch_a,) = rrset("x.", "A", "x. 1", rdclass="CH")
    (in_a,) = rrset("x.", "A", "192.0.2.1")
    assert encoder(ch_a) is not encoder(in_a)


# ---- signed data ----

SIGNER = "Example.COM."


def rrsig_for(rrset: dns.rrset.RRset, labels: int | None = None, signer: str = SIGNER) -> RRSIG:
    count = len(rrset.name.labels) - 1 if labels is None else labels
    text = f"{dns.rdatatype.to_text(rrset.rdtype)} 13 {count} 3600 20300101000000 20200101000000 4711 {signer} AAAA"
    (sig,) = dns.rrset.from_text(rrset.name, 300, "IN", "RRSIG", text)
    assert isinstance(sig, RRSIG)
    return sig


def same_signed_data(rrset: dns.rrset.RRset, rrsig: RRSIG) -> None:
    try:
        expected: bytes | type[Exception] = dns.dnssec._make_rrsig_signature_data(rrset, rrsig)
    except dns.exception.DNSException as exc:
        with pytest.raises(type(exc), match=str(exc)):
            signed_data(rrset, rrsig)
        return
    assert signed_data(rrset, rrsig) == expected


@pytest.mark.parametrize(("rdtype", "text"), RECORDS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(RECORDS)])
def test_signed_data_of_every_type(rdtype: str, text: str) -> None:
    signed = rrset("Www.EXAMPLE.com.", rdtype, text)
    same_signed_data(signed, rrsig_for(signed))


def test_signed_data_of_common_rrsets() -> None:
    a = rrset("Www.Example.COM.", "A", "192.0.2.9", "192.0.2.1", "10.0.0.1")
    nsec = rrset("Example.com.", "NSEC", "B.Example.com. A NS SOA RRSIG NSEC DNSKEY")
    dnskey = rrset("example.com.", "DNSKEY", RECORDS[21][1], "256 3 13 " + "AQID" * 22)
    ns = rrset("example.com.", "NS", "B.Example.com.", "a.EXAMPLE.com.", "A.example.com.")  # sort after lower-casing
    for signed in (a, nsec, dnskey, ns):
        same_signed_data(signed, rrsig_for(signed))


@pytest.mark.parametrize("labels", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("owner", ["A.b.Example.com.", "*.Example.com.", "*.B.example.com.", "."])
def test_signed_data_wildcards_and_label_counts(owner: str, labels: int) -> None:
    signed = rrset(owner, "A", "192.0.2.1")
    same_signed_data(signed, rrsig_for(signed, labels))


def test_signed_data_relative_names() -> None:
    signed = dns.rrset.from_text(dns.name.from_text("www", None), 300, "IN", "A", "192.0.2.1")
    same_signed_data(signed, rrsig_for(rrset("www.example.com.", "A", "192.0.2.1")))
    absolute = rrset("www.example.com.", "A", "192.0.2.1")
    relative_signer = rrsig_for(absolute).replace(signer=dns.name.from_text("example", None))
    assert isinstance(relative_signer, RRSIG)
    same_signed_data(absolute, relative_signer)


# ---- generated ----

# Up to 5 labels of up to 40 octets stay under 255 octets.
_label = st.text(alphabet="aAbBzZ09-*_", min_size=1, max_size=12).map(str.encode) | st.binary(min_size=1, max_size=40)
_names = st.lists(_label, min_size=0, max_size=5).map(lambda labels: dns.name.Name([*labels, b""]))


@st.composite
def rdatas(draw: st.DrawFn, rdtype: dns.rdatatype.RdataType) -> dns.rdata.Rdata:
    name = draw(_names)
    number = draw(st.integers(0, 2**16 - 1))
    if rdtype == dns.rdatatype.A:
        text = ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    elif rdtype == dns.rdatatype.AAAA:
        return dns.rdata.from_wire(dns.rdataclass.IN, rdtype, draw(st.binary(min_size=16, max_size=16)), 0, 16)
    elif rdtype in (dns.rdatatype.NS, dns.rdatatype.CNAME, dns.rdatatype.PTR, dns.rdatatype.DNAME):
        text = name.to_text()
    elif rdtype == dns.rdatatype.MX:
        text = f"{number} {name}"
    elif rdtype == dns.rdatatype.SRV:
        text = f"{number} {number // 2} {number // 3} {name}"
    elif rdtype == dns.rdatatype.SOA:
        text = f"{name} {draw(_names)} {number} 1 2 3 {number * 7}"
    elif rdtype == dns.rdatatype.TXT:
        strings = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3))
        wire = b"".join(bytes((len(s),)) + s for s in strings)
        return dns.rdata.from_wire(dns.rdataclass.IN, rdtype, wire, 0, len(wire))
    elif rdtype == dns.rdatatype.NSEC:
        text = f"{name} " + " ".join(sorted({f"TYPE{n}" for n in draw(st.lists(st.integers(1, 2000), max_size=5))}))
    elif rdtype == dns.rdatatype.RRSIG:
        text = f"A 13 {number % 256} 300 20300101000000 20200101000000 {number} {name} AAECAw=="
    elif rdtype == dns.rdatatype.DS:
        text = f"{number} 13 99 " + draw(st.binary(min_size=1, max_size=40)).hex()
    else:
        text = "256 3 13 " + "AQID" * (number % 20 + 1)
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


_TYPES = [
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
    dns.rdatatype.CNAME,
    dns.rdatatype.PTR,
    dns.rdatatype.DNAME,
    dns.rdatatype.MX,
    dns.rdatatype.SRV,
    dns.rdatatype.SOA,
    dns.rdatatype.TXT,
    dns.rdatatype.NSEC,
    dns.rdatatype.RRSIG,
    dns.rdatatype.DS,
    dns.rdatatype.DNSKEY,
]


@st.composite
def rrsets(draw: st.DrawFn) -> dns.rrset.RRset:
    rdtype = draw(st.sampled_from(_TYPES))
    result = dns.rrset.RRset(draw(_names), dns.rdataclass.IN, rdtype)
    for rd in draw(st.lists(rdatas(rdtype), min_size=1, max_size=4)):
        result.add(rd, draw(st.integers(0, 2**31 - 1)))
    return result


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    qname=_names,
    sections=st.lists(st.lists(rrsets(), max_size=5), min_size=3, max_size=3),
    rcode=st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.BADVERS]),
    text=st.none() | st.text(max_size=30),
)
def test_generated_messages(
    qname: dns.name.Name, sections: list[list[dns.rrset.RRset]], rcode: dns.rcode.Rcode, text: str | None
) -> None:
    query = dns.message.make_query(qname, "A", want_dnssec=True)
    message = dns.message.make_response(query)
    message.answer, message.authority, message.additional = sections
    message.use_edns(0, dns.flags.DO, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.OTHER, text)])
    message.set_rcode(rcode)
    assert_same(message)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(signed=rrsets(), labels=st.integers(0, 7), signer=_names)
def test_generated_signed_data(signed: dns.rrset.RRset, labels: int, signer: dns.name.Name) -> None:
    same_signed_data(signed, rrsig_for(signed, labels, signer.to_text()))
