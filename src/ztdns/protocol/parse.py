"""DNS messages from wire to ``dns.message.Message``: ``dns.message.from_wire`` at a third to a half of the cost.

Used for upstream responses in recursion and for client queries in the guard stage. Parsing responses is the
largest item of cold-cache recursion (about a fifth of its CPU), and a query costs ~60 µs to dnspython's reader
and ~20 µs to this one: dnspython's reader
builds every name and record through layers of generic parser calls. This reader walks the message with
``struct.unpack_from``, reads the records that fill responses (RRSIG, NSEC, SOA, NS, CNAME, A, AAAA) field by
field into dnspython's own classes, and reuses what repeats — names, and records whose value depends on their
bytes alone (the same SOA signature or DNSKEY set comes back again and again); both are immutable in
dnspython, so sharing them is safe.

It is exactly as strict as dnspython, by construction: framing follows ``dns.message._WireReader`` check for
check, names follow ``dns.name.from_wire_parser``, each hand-read record type mirrors its class's
``from_wire_parser`` in the pinned dnspython (an inherited one is used only while the class still inherits it),
every value goes through the record class's constructor (which validates), and other types are parsed by
dnspython. Anything outside the plain case (another opcode, TSIG) and any input
this reader rejects goes to ``dns.message.from_wire``, whose verdict — a Message or its exception — is the
answer. tests/test_response_parse.py holds it to that on real, mutated and random messages.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.OPT
import dns.rdtypes.nsbase
import dns.rdtypes.rrsigbase
import dns.rrset
import dns.wire

_HEADER = struct.Struct("!HHHHHH")
_QUESTION = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")
_RRSIG_FIELDS = struct.Struct("!HBBIIIH")
_SOA_FIELDS = struct.Struct("!IIIII")
_MAX_POINTER_CHAIN = dns.name.MAX_COMPRESSION_POINTER_CHAIN
_IN = dns.rdataclass.IN
_OPT = dns.rdatatype.OPT
_TSIG = dns.rdatatype.TSIG
# Types whose rdata dnspython reads without following compression pointers (RRSIG and NSEC names are read with
# decompression off): their value depends on the rdata bytes alone, so equal bytes give an equal record.
_CONTEXT_FREE = frozenset(
    int(t)
    for t in (
        dns.rdatatype.A,
        dns.rdatatype.AAAA,
        dns.rdatatype.DS,
        dns.rdatatype.DNSKEY,
        dns.rdatatype.RRSIG,
        dns.rdatatype.NSEC,
        dns.rdatatype.NSEC3,
        dns.rdatatype.TXT,
    )
)
_MEMO_LIMIT = 8192  # per table; cleared whole when full (entries are cheap to rebuild)


class _Unsupported(Exception):
    """Something this reader leaves to dnspython."""


class _Memo:
    def __init__(self) -> None:
        # labels as read -> (the Name, its labels lower-cased: what Name equality compares)
        self.names: dict[tuple[bytes, ...], tuple[dns.name.Name, tuple[bytes, ...]]] = {}
        self.rdatas: dict[tuple[int, bytes], dns.rdata.Rdata] = {}

    def name(self, labels: tuple[bytes, ...]) -> tuple[dns.name.Name, tuple[bytes, ...]]:
        found = self.names.get(labels)
        if found is None:
            # Name() validates (length): it raises for the same labels every time.
            found = dns.name.Name(labels), tuple(label.lower() for label in labels)
            if len(self.names) >= _MEMO_LIMIT:
                self.names.clear()
            self.names[labels] = found
        return found


_memo = _Memo()


def _rdclass(value: int) -> dns.rdataclass.RdataClass:
    return dns.rdataclass.RdataClass.make(value)


@functools.lru_cache(maxsize=1024)
def _rdtype(value: int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(value)


def parse_message(wire: bytes) -> dns.message.Message:
    """``dns.message.from_wire(wire)`` with default options: the same Message, or the same exception."""
    try:
        return _read(wire, _memo)
    except Exception:  # rejected or unsupported here: dnspython decides (and raises its own error)
        return dns.message.from_wire(wire)


def _name(wire: bytes, current: int, end: int, memo: _Memo, decompress: bool) -> tuple[dns.name.Name, int]:
    """The name at ``current`` (reading no further than ``end``), and the offset after it."""
    found, after = _folded_name(wire, current, end, memo, decompress)
    return found[0], after


def _folded_name(
    wire: bytes, current: int, end: int, memo: _Memo, decompress: bool
) -> tuple[tuple[dns.name.Name, tuple[bytes, ...]], int]:
    """The name at ``current`` with its lower-cased labels, and the offset after it.

    Mirrors ``dns.name.from_wire_parser``: pointers (when allowed) must point strictly backwards, each before
    the last, at most 16 of them, and what a pointer leads to must not run into the part that pointed."""
    labels: list[bytes] = []
    biggest_pointer = start = current
    after = -1  # the end of the first segment when there are pointers
    hops = 0
    if current >= end:
        raise dns.exception.FormError
    count = wire[current]
    current += 1
    while count:
        if count < 64:
            if current + count > end:
                raise dns.exception.FormError
            labels.append(wire[current : current + count])
            current += count
        elif count >= 192:
            if not decompress:
                raise dns.name.DecompressionForbidden
            if current >= end:
                raise dns.exception.FormError
            pointer = (count & 0x3F) * 256 + wire[current]
            current += 1
            if pointer >= biggest_pointer:
                raise dns.name.BadPointer
            biggest_pointer = pointer
            hops += 1
            if hops > _MAX_POINTER_CHAIN:
                raise dns.name.PointerChainTooLong
            if after < 0:
                after = current
            end = start
            current = start = pointer
        else:
            raise dns.name.BadLabelType
        if current >= end:
            raise dns.exception.FormError
        count = wire[current]
        current += 1
    labels.append(b"")
    return memo.name(tuple(labels)), current if after < 0 else after


# ----- records read by hand: (rdclass, rdtype, wire, start, end, memo) -> the record, for class IN ----------

_Reader = Callable[[int, int, bytes, int, int, _Memo], dns.rdata.Rdata]
_Record = Callable[..., dns.rdata.Rdata]  # a record class: its constructor's arguments differ by type


def _class_of(rdtype: dns.rdatatype.RdataType) -> type[dns.rdata.Rdata]:
    cls: type[dns.rdata.Rdata] = dns.rdata.get_rdata_class(_IN, rdtype)
    return cls


def _mirrors(cls: type[dns.rdata.Rdata], base: type[dns.rdata.Rdata]) -> bool:
    """Does ``cls`` still parse with the very ``from_wire_parser`` of ``base`` that a reader below mirrors?"""
    return getattr(cls.from_wire_parser, "__func__", None) is getattr(base.from_wire_parser, "__func__", 0)


def _address_reader(cls: _Record) -> _Reader:
    def read(rdclass: int, rdtype: int, wire: bytes, start: int, end: int, memo: _Memo) -> dns.rdata.Rdata:
        return cls(rdclass, rdtype, wire[start:end])

    return read


def _rrsig_reader(cls: _Record) -> _Reader:
    def read(rdclass: int, rdtype: int, wire: bytes, start: int, end: int, memo: _Memo) -> dns.rdata.Rdata:
        if start + 18 > end:
            raise dns.exception.FormError
        fields = _RRSIG_FIELDS.unpack_from(wire, start)
        signer, current = _name(wire, start + 18, end, memo, False)
        return cls(rdclass, rdtype, *fields, signer, wire[current:end])

    return read


def _target_reader(cls: _Record) -> _Reader:
    def read(rdclass: int, rdtype: int, wire: bytes, start: int, end: int, memo: _Memo) -> dns.rdata.Rdata:
        target, current = _name(wire, start, end, memo, True)
        if current != end:
            raise dns.exception.FormError
        return cls(rdclass, rdtype, target)

    return read


def _soa_reader(cls: _Record) -> _Reader:
    def read(rdclass: int, rdtype: int, wire: bytes, start: int, end: int, memo: _Memo) -> dns.rdata.Rdata:
        mname, current = _name(wire, start, end, memo, True)
        rname, current = _name(wire, current, end, memo, True)
        if current + 20 != end:
            raise dns.exception.FormError
        return cls(rdclass, rdtype, mname, rname, *_SOA_FIELDS.unpack_from(wire, current))

    return read


def _nsec_reader(cls: _Record) -> _Reader:
    bitmap_class = dns.rdtypes.ANY.NSEC.Bitmap  # what NSEC's own reader uses

    def read(rdclass: int, rdtype: int, wire: bytes, start: int, end: int, memo: _Memo) -> dns.rdata.Rdata:
        following, current = _name(wire, start, end, memo, False)
        # The type bitmap reads no names: dnspython's own reader on just its bytes reads exactly the same.
        bitmap = bitmap_class.from_wire_parser(dns.wire.Parser(wire[current:end]))
        return cls(rdclass, rdtype, following, bitmap)

    return read


def _hand_readers() -> dict[int, _Reader]:
    from dns.rdtypes.ANY.SOA import SOA
    from dns.rdtypes.IN.A import A
    from dns.rdtypes.IN.AAAA import AAAA

    wanted: list[tuple[dns.rdatatype.RdataType, type[dns.rdata.Rdata], Callable[[_Record], _Reader]]] = [
        (dns.rdatatype.A, A, _address_reader),
        (dns.rdatatype.AAAA, AAAA, _address_reader),
        (dns.rdatatype.RRSIG, dns.rdtypes.rrsigbase.RRSIGBase, _rrsig_reader),
        (dns.rdatatype.NS, dns.rdtypes.nsbase.NSBase, _target_reader),
        (dns.rdatatype.CNAME, dns.rdtypes.nsbase.NSBase, _target_reader),
        (dns.rdatatype.SOA, SOA, _soa_reader),
        (dns.rdatatype.NSEC, dns.rdtypes.ANY.NSEC.NSEC, _nsec_reader),
    ]
    readers: dict[int, _Reader] = {}
    for rdtype, base, make in wanted:
        cls = _class_of(rdtype)
        if issubclass(cls, base) and _mirrors(cls, base):
            readers[int(rdtype)] = make(cls)
    return readers


_READERS = _hand_readers()
_OPT_RECORD: _Record = dns.rdtypes.ANY.OPT.OPT


def _dnspython_rdata(rdclass: int, rdtype: int, wire: bytes, start: int, length: int) -> dns.rdata.Rdata:
    kind = dns.rdatatype.RdataType.make(rdtype)
    return dns.rdata.from_wire(dns.rdataclass.RdataClass.make(rdclass), kind, wire, start, length)


def _rdata(rdclass: int, rdtype: int, wire: bytes, start: int, length: int, memo: _Memo) -> dns.rdata.Rdata:
    """One record's data, as ``dns.rdata.from_wire`` gives it."""
    end = start + length
    if end > len(wire):
        raise dns.exception.FormError
    if rdtype == _OPT and not length:
        # An OPT without options (most responses): what OPT.from_wire_parser builds from no bytes.
        return _OPT_RECORD(rdclass, rdtype, [])
    if rdclass != _IN:
        return _dnspython_rdata(rdclass, rdtype, wire, start, length)
    key = None
    if rdtype in _CONTEXT_FREE:
        key = (rdtype, wire[start:end])
        rdata = memo.rdatas.get(key)
        if rdata is not None:
            return rdata
    reader = _READERS.get(rdtype)
    if reader is None:
        rdata = _dnspython_rdata(rdclass, rdtype, wire, start, length)
    else:
        rdata = reader(rdclass, rdtype, wire, start, end, memo)
    if key is not None:
        if len(memo.rdatas) >= _MEMO_LIMIT:
            memo.rdatas.clear()
        memo.rdatas[key] = rdata
    return rdata


def _read(wire: bytes, memo: _Memo) -> dns.message.Message:
    """``dns.message._WireReader.read`` for a QUERY-opcode message without TSIG, with default options."""
    size = len(wire)
    if size < 12:
        raise dns.message.ShortHeader
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
        raise _Unsupported("opcode")
    message = dns.message.QueryMessage(id=ident)
    message.flags = dns.flags.Flag(flags)
    message.wire = wire
    current = 12
    question = message.question
    for _ in range(qdcount):
        name, current = _name(wire, current, size, memo, True)
        if current + 4 > size:
            raise dns.exception.FormError
        rdtype, rdclass = _QUESTION.unpack_from(wire, current)
        current += 4
        message.find_rrset(question, name, rdclass, rdtype, create=True, force_unique=True)
    # Records join the RRset of equal name (case-insensitively), class, type and covered type, as find_rrset
    # does through the message's index; looked up here by lower-cased labels rather than by Name (a Name hashes
    # and compares in Python, character by character), and entered in the index once per RRset.
    index = message.index
    rrsets: dict[tuple[int, tuple[bytes, ...], int, int, int], dns.rrset.RRset] = {}
    for number, count in ((1, ancount), (2, nscount), (3, arcount)):
        section = message.sections[number]
        for _ in range(count):
            (name, folded), current = _folded_name(wire, current, size, memo, True)
            if current + 10 > size:
                raise dns.exception.FormError
            rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, current)
            current += 10
            if rdtype == _TSIG:
                raise _Unsupported("TSIG")
            if rdtype == _OPT and (number != 3 or message.opt is not None or folded != (b"",)):
                raise dns.message.BadEDNS
            rdata = _rdata(rdclass, rdtype, wire, current, rdlen, memo)
            current += rdlen
            if rdtype == _OPT:
                message.opt = dns.rrset.from_rdata(name, ttl, rdata)
                continue
            covers = rdata.covers()
            key = (number, folded, rdclass, rdtype, covers)
            rrset = rrsets.get(key)
            if rrset is None:
                kind = _rdtype(rdtype)
                rrset = rrsets[key] = dns.rrset.RRset(name, _rdclass(rdclass), kind, covers)
                section.append(rrset)
                index[(number, name, rrset.rdclass, kind, covers, None)] = rrset
            # Rdataset.add, for a record of the RRset's own class, type and covered type: the TTL minimised,
            # singleton types replaced, equal records kept once (hashing the record once, not twice).
            if ttl > 0x7FFFFFFF:
                ttl = 0
            items = rrset.items
            if not items or ttl < rrset.ttl:
                rrset.ttl = ttl
            if items and dns.rdatatype.is_singleton(rdtype):
                items.clear()
            items.setdefault(rdata)
    if current != size:
        raise dns.message.TrailingJunk
    return message
