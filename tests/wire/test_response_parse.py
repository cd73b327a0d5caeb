"""ztdns.wire.parse against dnspython: the same Message for what dnspython accepts, never more lenient.

``parse_message`` falls back to ``dns.message.from_wire`` for anything its own reader (``_read``) rejects, so
the property that matters is about ``_read``: whenever it accepts bytes, dnspython accepts them too and builds
an equal message. Checked on typical responses and on mutated and random bytes.
"""

from __future__ import annotations

import io
import itertools
import logging
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns.wire import parse
from ztdns.wire.parse import _READERS, _Memo, _read, fingerprint, parse_message
from ztdns.wire.records import skip_name

_SIG = (
    "20300101000000 20200101000000 12345 {signer} AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEy"
)


def _rrset(name: str, ttl: int, rdtype: str, *rdatas: str, rdclass: str = "IN") -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, rdclass, rdtype, *rdatas)


def _sig(name: str, covered: str, labels: int, signer: str) -> dns.rrset.RRset:
    return _rrset(name, 300, "RRSIG", f"{covered} 13 {labels} 300 {_SIG.format(signer=signer)}")


def _message(qname: str, qtype: str, *, answer=(), authority=(), additional=(), rcode=0, edns=True, ede=True) -> bytes:  # type: ignore[no-untyped-def]
    query = dns.message.make_query(qname, qtype, want_dnssec=edns, use_edns=0 if edns else False, id=4660)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.set_rcode(rcode)
    response.answer = list(answer)
    response.authority = list(authority)
    response.additional = list(additional)
    if edns:
        options: list[dns.edns.Option] = [dns.edns.EDEOption(dns.edns.EDECode.OTHER, "x")] if ede else []
        response.use_edns(0, dns.flags.DO, 1232, options=options)
    return response.to_wire()


def corpus() -> list[bytes]:
    """Responses like the ones recursion meets: referrals, signed answers and denials, chains, other types."""
    return [
        # A referral with glue (in and out of zone), a signed DS and mixed-case owner names (0x20 echoes).
        _message(
            "www.Secure.LAB.",
            "A",
            authority=[
                _rrset("secure.lab.", 3600, "NS", "ns.secure.lab.", "ns.other.example."),
                _rrset("secure.lab.", 3600, "DS", "17461 13 2 " + "ab" * 32),
                _sig("secure.lab.", "DS", 2, "lab."),
            ],
            additional=[
                _rrset("ns.secure.lab.", 3600, "A", "127.0.0.12"),
                _rrset("ns.secure.lab.", 3600, "AAAA", "fd00::12"),
                _rrset("ns.other.example.", 3600, "A", "192.0.2.1"),
            ],
        ),
        # A signed NXDOMAIN: SOA, NSEC records and their signatures.
        _message(
            "nx.secure.lab.",
            "A",
            rcode=3,
            authority=[
                _rrset("secure.lab.", 300, "SOA", "ns.secure.lab. hostmaster.lab. 1 3600 600 86400 300"),
                _rrset("secure.lab.", 300, "NSEC", "deep.secure.lab. NS SOA RRSIG NSEC DNSKEY TYPE65534"),
                _rrset("*.wild.secure.lab.", 300, "NSEC", "www.secure.lab. A TXT RRSIG NSEC"),
                _sig("secure.lab.", "SOA", 2, "secure.lab."),
                _sig("secure.lab.", "NSEC", 2, "secure.lab."),
                _sig("*.wild.secure.lab.", "NSEC", 3, "secure.lab."),
            ],
        ),
        # NSEC3 denial, DNSKEY set, TXT, MX, CNAME chain and DNAME: the types dnspython reads for us.
        _message(
            "x.nsec3.lab.",
            "TXT",
            answer=[
                _rrset("x.nsec3.lab.", 60, "CNAME", "y.nsec3.lab."),
                _rrset("y.nsec3.lab.", 60, "TXT", '"a b" "c"'),
                _rrset("y.nsec3.lab.", 60, "MX", "10 mail.nsec3.lab."),
                _rrset("d.nsec3.lab.", 60, "DNAME", "other.lab."),
            ],
            authority=[
                _rrset("nsec3.lab.", 300, "DNSKEY", "257 3 13 " + "AQID" * 22, "256 3 13 " + "BAUG" * 22),
                _rrset(
                    "2vptu5timamqttgl4luu9kg21e0aor3s.nsec3.lab.",
                    300,
                    "NSEC3",
                    "1 0 0 - 2VPTU5TIMAMQTTGL4LUU9KG21E0AOR3T A RRSIG",
                ),
            ],
        ),
        # Several records in one RRset (order kept), a duplicate (dnspython keeps one), TTLs above 2^31.
        _message(
            "multi.lab.",
            "A",
            answer=[_rrset("multi.lab.", 300, "A", "192.0.2.3", "192.0.2.1", "192.0.2.2", "192.0.2.1")],
        ),
        # An OPT record without options; no EDNS, an empty answer; another class.
        _message("www.lab.", "A", answer=[_rrset("www.lab.", 60, "A", "192.0.2.9")], ede=False),
        _message("plain.lab.", "NS", edns=False),
        _message("chaos.", "TXT", answer=[_rrset("version.bind.", 0, "TXT", '"9"', rdclass="CH")]),
    ]


def _with_big_ttl(wire: bytes) -> bytes:
    """The first answer record's TTL set above 2^31 (dnspython reads such a TTL as 0)."""
    offset = skip_name(wire, skip_name(wire, 12) + 4) + 4  # past the question, the owner, type and class
    return wire[:offset] + struct.pack("!I", 0x80000001) + wire[offset + 4 :]


def _with_duplicate(wire: bytes) -> bytes:
    """The first answer record twice (dnspython keeps one of equal records)."""
    start = skip_name(wire, 12) + 4
    end = skip_name(wire, start) + 10
    end += struct.unpack_from("!H", wire, end - 2)[0]
    ancount = struct.unpack_from("!H", wire, 6)[0]
    return wire[:6] + struct.pack("!H", ancount + 1) + wire[8:end] + wire[start:end] + wire[end:]


def describe(message: dns.message.Message) -> object:
    """Everything a Message says, case of names and order of records included."""

    def rdata(rd: dns.rdata.Rdata) -> object:
        return type(rd), rd.rdclass, rd.rdtype, rd.to_text(), rd.to_wire()

    sections = [
        [(r.name.labels, r.ttl, r.rdclass, r.rdtype, r.covers, r.deleting, [rdata(rd) for rd in r]) for r in section]
        for section in message.sections
    ]
    opt = message.opt
    return (
        type(message),
        message.id,
        message.flags,
        sections,
        None if opt is None else (opt.name, opt.ttl, opt.rdclass, [rdata(rd) for rd in opt]),
        message.edns,
        message.ednsflags,
        message.payload,
        message.options,
        message.wire,
        message.origin,
        message.xfr,
        message.tsig,
        # find_rrset's index: the same keys, each leading to the RRset at the same place
        {key: (key[0], message.sections[key[0]].index(rrset)) for key, rrset in (message.index or {}).items()},
        # and everything is of the same types, slot by slot (names case and all), in the same order
        fingerprint(message.flags),
        fingerprint(message.sections),
        fingerprint(message.opt),
        [fingerprint(key) for key in message.index or {}],
        # every record is found in its RRset by its own hash (the parser hashes new records its own, faster way)
        all(rd in r.items for section in message.sections for r in section for rd in r.items),
    )


def _same_or_rejected(wire: bytes) -> None:
    """The property: if our reader accepts ``wire``, dnspython does too and says the same."""
    try:
        ours = _read(wire, _Memo())
    except Exception:
        return  # parse_message then returns whatever dnspython decides
    theirs = dns.message.from_wire(wire)  # raises here if we were more lenient
    assert describe(ours) == describe(theirs)


# Ids by position: the corpus's record order can differ between processes, and pytest-xdist workers must agree.
TYPICAL = [*corpus(), _with_big_ttl(corpus()[3]), _with_duplicate(corpus()[3])]


@pytest.mark.parametrize("wire", TYPICAL, ids=[f"response{i}" for i in range(len(TYPICAL))])
def test_typical_responses_parse_by_hand_like_dnspython(wire: bytes) -> None:
    ours = _read(wire, _Memo())  # the hand reader itself, not the fallback
    assert describe(ours) == describe(dns.message.from_wire(wire))
    assert describe(parse_message(wire)) == describe(ours)


def test_big_ttl_reads_as_zero_and_duplicates_collapse() -> None:
    assert _read(_with_big_ttl(corpus()[3]), _Memo()).answer[0].ttl == 0
    wire = _with_duplicate(corpus()[3])
    ours = _read(wire, _Memo())
    assert len(ours.answer[0]) == 3
    assert describe(ours) == describe(dns.message.from_wire(wire))


def test_repeated_records_are_shared_and_still_equal() -> None:
    memo = _Memo()
    first, second = (_read(corpus()[1], memo) for _ in range(2))
    assert describe(first) == describe(second)
    sig_first, sig_second = first.authority[3][0], second.authority[3][0]
    assert sig_first is sig_second  # immutable, and equal bytes make an equal record


def test_hand_readers_are_in_use() -> None:
    # The pinned dnspython still has the from_wire_parser functions the hand readers mirror.
    names = {dns.rdatatype.to_text(dns.rdatatype.RdataType.make(t)) for t in _READERS}
    assert names == {"A", "AAAA", "RRSIG", "NS", "CNAME", "SOA", "NSEC", "NSEC3", "DS", "DNSKEY"}
    # ... and the pinned dnspython's records are what the slot builders build: no type fell back to its
    # constructor, Names and RRsets are built slot by slot.
    assert all(make.__qualname__.startswith("_slot_builder") for _, make in _READERS.values())
    assert parse._make_name is parse._built_name
    assert parse._RRSETS_AGREE


def test_compressed_signer_is_rejected_like_dnspython() -> None:
    """RRSIG signers and NSEC next names may not be compressed: the record memo relies on it."""
    wire = bytearray(corpus()[1])
    message = dns.message.from_wire(bytes(wire))
    signer = message.authority[3][0].signer.to_wire()
    assert signer is not None
    at = bytes(wire).rindex(signer)
    pointer = struct.pack("!H", 0xC000 | 12)  # the question name
    broken = bytes(wire[:at]) + pointer + bytes(wire[at + len(signer) :])
    broken = _fix_rdlength(broken, at, len(pointer) - len(signer))
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(broken)
    with pytest.raises(dns.exception.DNSException):
        _read(broken, _Memo())
    with pytest.raises(dns.exception.DNSException):
        parse_message(broken)


def _fix_rdlength(wire: bytes, inside: int, delta: int) -> bytes:
    """Adjust the RDLENGTH of the record whose data contains offset ``inside`` by ``delta``."""
    end = len(wire)
    header = struct.unpack_from("!HHHHHH", wire)
    offset = skip_name(wire, 12) + 4  # one question
    for _ in range(sum(header[3:])):
        offset = skip_name(wire, offset)
        rdlength = struct.unpack_from("!H", wire, offset + 8)[0]
        data = offset + 10
        if data <= inside < data + rdlength:
            return wire[: offset + 8] + struct.pack("!H", rdlength + delta) + wire[offset + 10 : end]
        offset = data + rdlength
    raise AssertionError("no record contains the offset")


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, len(corpus()) - 1),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_responses(index: int, edits: list[tuple[int, int]]) -> None:
    wire = bytearray(corpus()[index])
    for position, value in edits:
        wire[position % len(wire)] = value
    _same_or_rejected(bytes(wire))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(corpus()) - 1), cut=st.integers(0, 2000), tail=st.binary(max_size=40))
def test_truncated_and_extended_responses(index: int, cut: int, tail: bytes) -> None:
    wire = corpus()[index]
    _same_or_rejected(wire[: cut % (len(wire) + 1)] + tail)


@settings(max_examples=300, deadline=None)
@given(
    counts=st.tuples(*(st.integers(0, 3) for _ in range(4))),
    body=st.binary(max_size=300),
)
def test_random_bodies(counts: tuple[int, int, int, int], body: bytes) -> None:
    _same_or_rejected(struct.pack("!HHHHHH", 1, 0x8400, *counts) + body)


# ----- each hand reader and builder against dnspython, record by record -----------------------------------------


def _their_record(rdtype: int, rdata: bytes) -> dns.rdata.Rdata | None:
    try:
        return dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), rdata, 0, len(rdata))
    except Exception:
        return None


def _same_record(ours: dns.rdata.Rdata, theirs: dns.rdata.Rdata) -> None:
    """Indistinguishable: type and every slot (names case and all), equality both ways, hash, wire, text."""
    assert fingerprint(ours) == fingerprint(theirs)
    assert ours == theirs and theirs == ours and hash(ours) == hash(theirs)
    assert ours.to_wire() == theirs.to_wire() and ours.to_digestable() == theirs.to_digestable()
    assert ours.to_text() == theirs.to_text() and ours.covers() == theirs.covers()


def _samples() -> dict[int, list[bytes]]:
    """Record data of each hand-read type from the corpus (and the readers' own samples)."""
    found: dict[int, list[bytes]] = {rdtype: [] for rdtype in _READERS}
    for text in parse._HAND_READ:
        found[int(text[0])].append(dns.rdata.from_text("IN", text[0], text[3]).to_wire() or b"")
    for wire in corpus():
        for section in dns.message.from_wire(wire).sections[1:]:
            for rrset in section:
                if rrset.rdtype in found and rrset.rdclass == dns.rdataclass.IN:
                    found[rrset.rdtype] += [rd.to_wire() for rd in rrset]
    return found


_SAMPLES = _samples()
_HAND_TYPES = sorted(_READERS)


def _read_one(rdtype: int, rdata: bytes) -> dns.rdata.Rdata | None:
    reader, make = _READERS[rdtype]
    try:
        record, items, _ = reader(rdtype, rdata, 0, len(rdata), _Memo(), make)
    except Exception:
        return None
    # The dict RRsets copy holds the record under the hash dnspython gives it (the parser computes it its own way)
    assert type(record) is dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype))
    assert list(items) == [record] and record in items and record in items.copy()
    return record


@settings(max_examples=600, deadline=None)
@given(
    rdtype=st.sampled_from(_HAND_TYPES),
    choice=st.integers(0, 100),
    edits=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 300),
    tail=st.binary(max_size=8),
)
def test_hand_readers_build_what_dnspython_builds(
    rdtype: int, choice: int, edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    """On real, mutated, cut and extended record data: rejected by dnspython, or read into the same record."""
    samples = _SAMPLES[rdtype]
    rdata = bytearray(samples[choice % len(samples)])
    for position, value in edits:
        if rdata:
            rdata[position % len(rdata)] = value
    data = bytes(rdata[: cut % (len(rdata) + 1)] if cut % 3 == 0 else rdata) + (tail if cut % 5 == 0 else b"")
    ours, theirs = _read_one(rdtype, data), _their_record(rdtype, data)
    if ours is not None:
        assert theirs is not None, "accepted what dnspython rejects"
        _same_record(ours, theirs)


@settings(max_examples=300, deadline=None)
@given(rdtype=st.sampled_from(_HAND_TYPES), rdata=st.binary(max_size=80))
def test_hand_readers_on_random_bytes(rdtype: int, rdata: bytes) -> None:
    ours, theirs = _read_one(rdtype, rdata), _their_record(rdtype, rdata)
    if ours is not None:
        assert theirs is not None, "accepted what dnspython rejects"
        _same_record(ours, theirs)


def test_every_sample_is_read_by_hand() -> None:
    for rdtype, samples in _SAMPLES.items():
        for rdata in samples:
            ours, theirs = _read_one(rdtype, rdata), _their_record(rdtype, rdata)
            assert ours is not None and theirs is not None
            _same_record(ours, theirs)


@given(
    labels=st.lists(st.binary(min_size=1, max_size=63), max_size=8).map(lambda labels: (*labels, b"")),
)
def test_names_are_built_like_dnspython(labels: tuple[bytes, ...]) -> None:
    try:
        theirs = dns.name.Name(labels)
    except dns.name.NameTooLong:
        with pytest.raises(dns.name.NameTooLong):
            parse._built_name(labels)
        return
    ours = parse._built_name(labels)
    assert fingerprint(ours) == fingerprint(theirs)
    assert ours == theirs and hash(ours) == hash(theirs) and ours.to_wire() == theirs.to_wire()
    assert ours.to_text() == theirs.to_text() and ours.canonicalize() == theirs.canonicalize()


@given(ttl=st.integers(0, 0x7FFFFFFF), count=st.integers(1, 3), covered=st.integers(0, 65535))
def test_rrsets_are_built_like_dnspython(ttl: int, count: int, covered: int) -> None:
    name = dns.name.from_text("Owner.Example.")
    kind = dns.rdatatype.RdataType.make(covered)
    records = [
        dns.rdata.from_text("IN", "RRSIG", f"{dns.rdatatype.to_text(kind)} 13 2 {n} " + _SIG.format(signer="x."))
        for n in range(count)
    ]
    theirs = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.RRSIG, kind)
    for record in records:
        theirs.add(record, ttl)
    ours = parse._built_rrset(name, 1, 46, kind, ttl, dict.fromkeys(records))
    assert fingerprint(ours) == fingerprint(theirs) and ours == theirs
    our_wire, their_wire = io.BytesIO(), io.BytesIO()
    assert ours.to_wire(our_wire, want_shuffle=False) == theirs.to_wire(their_wire, want_shuffle=False) == count
    assert our_wire.getvalue() == their_wire.getvalue() and ours.to_text() == theirs.to_text()


def test_a_builder_that_disagrees_falls_back_to_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time guard: a slot builder whose record differs from dnspython's for the sample is not used."""

    def wrong(cls: type[dns.rdata.Rdata], rdtype: dns.rdatatype.RdataType) -> parse._Make | None:
        build = original(cls, rdtype)
        assert build is not None
        if cls.__name__ != "SOA":
            return build
        return lambda *values: build(*values[:-1], 7)  # the minimum field misread

    original = parse._slot_builder
    monkeypatch.setattr(parse, "_slot_builder", wrong)
    readers = parse._hand_readers()
    assert set(readers) == set(_READERS)
    soa = int(dns.rdatatype.SOA)
    assert not readers[soa][1].__qualname__.startswith("_slot_builder")
    assert all(make.__qualname__.startswith("_slot_builder") for rdtype, (_, make) in readers.items() if rdtype != soa)
    rdata = _SAMPLES[soa][0]
    _same_record(readers[soa][0](soa, rdata, 0, len(rdata), _Memo(), readers[soa][1])[0], _their_record(soa, rdata))  # type: ignore[arg-type]


def test_fingerprints_tell_case_and_types_apart() -> None:
    lower, upper = dns.name.from_text("a.example."), dns.name.from_text("A.example.")
    assert lower == upper and fingerprint(lower) != fingerprint(upper)
    assert fingerprint(dns.rdatatype.RdataType.A) != fingerprint(1)
    ns = dns.rdata.from_text("IN", "NS", "a.example.")
    assert ns == dns.rdata.from_text("IN", "NS", "A.example.")
    assert fingerprint(ns) != fingerprint(dns.rdata.from_text("IN", "NS", "A.example."))


def test_what_falls_back_to_dnspython_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The import-time check: a hand reader whose record differs from dnspython's is not used, and said so."""
    different = itertools.count()
    monkeypatch.setattr(parse, "fingerprint", lambda value: next(different))  # nothing agrees with dnspython
    with caplog.at_level(logging.WARNING, logger="ztdns.wire.parse"):
        assert parse._hand_readers() == {}
    [record] = caplog.records
    assert "falling back" in record.getMessage()
    assert "RRSIG (the sample record differs)" in record.getMessage()
