"""DNS messages from wire to ``dns.message.Message``: ``dns.message.from_wire`` at a fifth to a third of the cost.

Used for upstream responses in recursion and for client queries in the guard stage. Parsing responses is the
largest item of cold-cache recursion, and dnspython's reader builds every name and record through layers of
generic parser calls, immutability guards (a context variable set around every constructor, a check on every
attribute) and enum conversions. This reader walks the message with ``struct.unpack_from``, reads the records
that fill responses (RRSIG, NSEC, NSEC3, DS, DNSKEY, SOA, NS, CNAME, A, AAAA) field by field, and reuses what
repeats: names, and records whose value depends on bytes it has seen before (the same SOA, signature or DNSKEY
set comes back again and again); both are immutable in dnspython, so sharing them is safe. A record is kept with
a one-entry dict holding it: an RRset's record dict is a copy of that (a dict copy keeps the stored hash), so a
record seen before is not hashed again, and a new one is hashed from the encoder's bytes (``Rdata.__hash__``
serialises the record through dnspython's generic writer: 10-40 µs; see "hashing records" below).

It is exactly as strict as dnspython, by construction: framing follows ``dns.message._WireReader`` check for
check, names follow ``dns.name.from_wire_parser``, each hand-read record type mirrors its class's
``from_wire_parser`` in the pinned dnspython (an inherited one is used only while the class still inherits it)
and makes every check its constructor makes, and other types are parsed by dnspython. Anything outside the
plain case (another opcode, TSIG) and any input this reader rejects goes to ``dns.message.from_wire``, whose
verdict — a Message or its exception — is the answer.

Names, records and RRsets are built slot by slot (``object.__new__`` and ``object.__setattr__``, as dnspython's
own ``Rdata.replace`` does), with values already of the types their constructors would store (enums memoised
per value). That relies on dnspython's slots, so it is checked when this module loads: each hand reader, on a
sample record, must build an object :func:`fingerprint`-identical to dnspython's (type and every slot, names
case and all); a record type that fails is built through its constructor, a Name through ``Name()``, and if
RRsets fail every message goes to dnspython. tests/wire/test_response_parse.py holds the whole to dnspython's result
on real, mutated and random messages, and each builder on generated values.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import dns.dnssectypes
import dns.exception
import dns.flags
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.NSEC3
import dns.rdtypes.ANY.OPT
import dns.rdtypes.ANY.SOA
import dns.rdtypes.dnskeybase
import dns.rdtypes.dsbase
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.nsbase
import dns.rdtypes.rrsigbase
import dns.rrset
import dns.version

from ztdns.wire.encode import encoder_of_class

_HEADER = struct.Struct("!HHHHHH")
_QUESTION = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")
_RRSIG_FIELDS = struct.Struct("!HBBIIIH")
_KEY_FIELDS = struct.Struct("!HBB")  # DS: key tag, algorithm, digest type; DNSKEY: flags, protocol, algorithm
_NSEC3_FIELDS = struct.Struct("!BBH")
_SOA_FIELDS = struct.Struct("!IIIII")
_MAX_POINTER_CHAIN = dns.name.MAX_COMPRESSION_POINTER_CHAIN
log = logging.getLogger(__name__)
_IN = dns.rdataclass.IN
_OPT = dns.rdatatype.OPT
_TSIG = dns.rdatatype.TSIG
_NONE = dns.rdatatype.NONE
_QUESTION_SECTION, _ANSWER, _AUTHORITY, _ADDITIONAL = dns.message.MessageSection
# What DSBase's constructor checks a digest's length against (read by hand only while it is there)
_DS_DIGEST_LENGTHS: dict[int, int] | None = getattr(dns.rdtypes.dsbase.DSBase, "_digest_length_by_type", None)
_OPCODE_BITS = 0x7800
_MEMO_LIMIT = 8192  # per table; cleared whole when full (entries are cheap to rebuild)


class _Unsupported(Exception):
    """Something this reader leaves to dnspython."""


_new = object.__new__
_set = object.__setattr__
_T = TypeVar("_T")


class _Converted(dict[int, _T], Generic[_T]):
    """``convert(value)`` per value, computed once: enum conversions are pure, and dnspython's run Python code
    each time (``Flag(word)`` builds a new pseudo-member for every flag word with rcode bits). Keys are 8- or
    16-bit fields, so the table is bounded."""

    def __init__(self, convert: Callable[[int], _T]) -> None:
        super().__init__()
        self._convert = convert

    def __missing__(self, value: int) -> _T:
        converted = self[value] = self._convert(value)
        return converted


_TYPES = _Converted(dns.rdatatype.RdataType.make)
_CLASSES = _Converted(dns.rdataclass.RdataClass.make)
_FLAGS = _Converted(dns.flags.Flag)
_ALGORITHMS = _Converted(dns.dnssectypes.Algorithm.make)
_DIGEST_TYPES = _Converted(dns.dnssectypes.DSDigest.make)
_KEY_FLAGS = _Converted(dns.rdtypes.dnskeybase.Flag)


def _slot_names(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls``, base classes' first."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        names.extend((slots,) if isinstance(slots, str) else slots)
    return tuple(names)


_MISSING = object()


def fingerprint(value: object) -> object:
    """What tells dnspython values apart: type and, recursively, every slot (and attribute) or item — names by
    their labels as they are, since Name equality ignores case. Equal fingerprints: indistinguishable objects."""
    kind = type(value)
    if isinstance(value, tuple | list) and kind in (tuple, list):
        return kind, tuple(fingerprint(item) for item in value)
    if isinstance(value, dict) and kind is dict:
        return kind, tuple((fingerprint(k), fingerprint(v)) for k, v in value.items())
    slots = _slot_names(kind)
    if not slots:
        return kind, value
    attributes = getattr(value, "__dict__", {})
    return (
        kind,
        tuple((slot, fingerprint(getattr(value, slot, _MISSING))) for slot in slots),
        tuple((key, fingerprint(attributes[key])) for key in sorted(attributes)),
    )


# ----- names -------------------------------------------------------------------------------------------------


def _built_name(labels: tuple[bytes, ...]) -> dns.name.Name:
    """``Name(labels)`` for labels as the wire reader gives them (bytes of 0–63 octets, one empty label last)."""
    if len(labels) + sum(map(len, labels)) > 255:
        raise dns.name.NameTooLong
    name: dns.name.Name = _new(dns.name.Name)
    _set(name, "labels", labels)
    return name


def _name_builder() -> Callable[[tuple[bytes, ...]], dns.name.Name]:
    sample = (b"Www", b"example", b"")
    if fingerprint(_built_name(sample)) == fingerprint(dns.name.Name(sample)):
        return _built_name
    log.warning(  # pragma: no cover - a dnspython whose Name is more than its labels
        "hand-built names differ from dnspython %s's; names are built by dnspython's Name() (slower)",
        dns.version.version,
    )
    return dns.name.Name  # pragma: no cover


_make_name = _name_builder()

_Entry = tuple[
    dns.rdata.Rdata, dict[dns.rdata.Rdata, None], dns.rdatatype.RdataType
]  # a record, a one-entry dict of it, its covers


class _Memo:
    def __init__(self) -> None:
        # labels as read -> (the Name, its labels lower-cased: what Name equality compares)
        self.names: dict[tuple[bytes, ...], tuple[dns.name.Name, tuple[bytes, ...]]] = {}
        # (type, what determines the record: its bytes, or its names as read and its other bytes) -> entry
        self.records: dict[tuple[Any, ...], _Entry] = {}

    def name(self, labels: tuple[bytes, ...]) -> tuple[dns.name.Name, tuple[bytes, ...]]:
        found = self.names.get(labels)
        if found is None:
            # raises for the same labels every time (too long), as Name() does
            found = _make_name(labels), tuple(label.lower() for label in labels)
            if len(self.names) >= _MEMO_LIMIT:
                self.names.clear()
            self.names[labels] = found
        return found

    def keep(self, key: tuple[Any, ...], rdata: dns.rdata.Rdata) -> _Entry:
        entry = _entry(rdata)
        if len(self.records) >= _MEMO_LIMIT:
            self.records.clear()
        self.records[key] = entry
        return entry


def _entry(rdata: dns.rdata.Rdata) -> _Entry:
    return rdata, _items(rdata), rdata.covers()


# dnspython's record classes -> their twins that hash faster (see "hashing records" below; filled there)
_TWINS: dict[type[dns.rdata.Rdata], type[dns.rdata.Rdata]] = {}


def _items(rdata: dns.rdata.Rdata) -> dict[dns.rdata.Rdata, None]:
    """``{rdata: None}``, the record hashed by its twin class when it has one (the same value, faster)."""
    cls = type(rdata)
    twin = _TWINS.get(cls)
    if twin is None:
        return {rdata: None}
    _set(rdata, "__class__", twin)
    try:
        return {rdata: None}  # the dict keeps the hash: copies of it never hash the record again
    finally:
        _set(rdata, "__class__", cls)


_memo = _Memo()


def known_name(labels: tuple[bytes, ...]) -> tuple[dns.name.Name, tuple[bytes, ...]]:
    """The Name of ``labels`` and its lower-cased labels, from the memo of the names responses brought (made and
    remembered when new): for callers that would otherwise build the same names again for every response."""
    return _memo.name(labels)


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


# ----- records built slot by slot --------------------------------------------------------------------------

_Make = Callable[..., dns.rdata.Rdata]  # the type's own fields, converted, in slot order -> the record


def _slot_builder(cls: type[dns.rdata.Rdata], rdtype: dns.rdatatype.RdataType) -> _Make | None:
    """``cls(IN, rdtype, *values)`` for values the constructor stores as they are, without the constructor's
    per-call machinery; None when ``cls`` does not have the slots this assumes."""
    slots = _slot_names(cls)
    if slots[:3] != ("rdclass", "rdtype", "rdcomment"):
        return None  # pragma: no cover - another dnspython
    head = (("rdclass", _IN), ("rdtype", rdtype), ("rdcomment", None))
    fields = slots[3:]

    def build(*values: object) -> dns.rdata.Rdata:
        record: dns.rdata.Rdata = _new(cls)
        for slot, constant in head:
            _set(record, slot, constant)
        for slot, value in zip(fields, values, strict=True):
            _set(record, slot, value)
        return record

    return build


def _constructor(cls: type[dns.rdata.Rdata], rdtype: dns.rdatatype.RdataType) -> _Make:
    def build(*values: object) -> dns.rdata.Rdata:
        return cls(_IN, rdtype, *values)

    return build


# Reading one type's fields: (wire, start, end, memo, make) -> the record of class IN in wire[start:end].
_Fields = Callable[[bytes, int, int, _Memo, _Make], dns.rdata.Rdata]
# A reader: (rdtype, wire, start, end, memo, make) -> the record's entry, from the memo when it was seen.
_Reader = Callable[[int, bytes, int, int, _Memo, _Make], _Entry]


def _by_bytes(fields: _Fields) -> _Reader:
    """For a type whose record depends on its bytes alone: the memo is keyed by them."""

    def read(rdtype: int, wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> _Entry:
        key = (rdtype, wire[start:end])
        return memo.records.get(key) or memo.keep(key, fields(wire, start, end, memo, make))

    return read


@_by_bytes
def _read_a(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    return make(dns.ipv4.inet_ntoa(wire[start:end]))  # what A's constructor stores (and its length check)


@_by_bytes
def _read_aaaa(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    return make(dns.ipv6.inet_ntoa(wire[start:end]))


@_by_bytes
def _read_rrsig(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    if start + 18 > end:
        raise dns.exception.FormError
    covered, algorithm, labels, ttl, expiration, inception, key_tag = _RRSIG_FIELDS.unpack_from(wire, start)
    # The signer is read with decompression off, so the record depends on its bytes alone.
    signer, current = _name(wire, start + 18, end, memo, False)
    # Every field fits its check by size (a TTL is checked against 2^32 - 1): only the enums convert.
    return make(
        _TYPES[covered], _ALGORITHMS[algorithm], labels, ttl, expiration, inception, key_tag, signer, wire[current:end]
    )


@_by_bytes
def _read_ds(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    if start + 4 > end:
        raise dns.exception.FormError
    key_tag, algorithm, digest_type = _KEY_FIELDS.unpack_from(wire, start)
    digest = wire[start + 4 : end]
    # DSBase's own checks: the digest length of a known digest type; digest type 0 reserved.
    assert _DS_DIGEST_LENGTHS is not None  # else DS is not read by hand
    length = _DS_DIGEST_LENGTHS.get(digest_type)
    if (length is not None and len(digest) != length) or digest_type == 0:
        raise ValueError("digest length inconsistent with digest type")
    return make(key_tag, _ALGORITHMS[algorithm], _DIGEST_TYPES[digest_type], digest)


@_by_bytes
def _read_dnskey(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    if start + 4 > end:
        raise dns.exception.FormError
    flags, protocol, algorithm = _KEY_FIELDS.unpack_from(wire, start)
    return make(_KEY_FLAGS[flags], protocol, _ALGORITHMS[algorithm], wire[start + 4 : end])


def _windows(wire: bytes, current: int, end: int) -> tuple[tuple[int, bytes], ...]:
    """A type bitmap as ``Bitmap.from_wire_parser`` reads it and ``Bitmap()`` checks it: the windows."""
    windows: list[tuple[int, bytes]] = []
    last = -1
    while current < end:
        if current + 2 > end:
            raise dns.exception.FormError
        window, size = wire[current], wire[current + 1]
        current += 2 + size
        if current > end:
            raise dns.exception.FormError
        if window <= last or not 0 < size <= 32 or not wire[current - 1]:
            raise ValueError("bad bitmap window")  # order, length, trailing zero octet
        last = window
        windows.append((window, wire[current - size : current]))
    return tuple(windows)


@_by_bytes
def _read_nsec(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    following, current = _name(wire, start, end, memo, False)  # not decompressed: bytes alone
    return make(following, _windows(wire, current, end))


@_by_bytes
def _read_nsec3(wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> dns.rdata.Rdata:
    if start + 5 > end:
        raise dns.exception.FormError
    algorithm, flags, iterations = _NSEC3_FIELDS.unpack_from(wire, start)
    current = start + 5 + wire[start + 4]
    if current >= end:  # the salt, and at least the hash length after it
        raise dns.exception.FormError
    salt = wire[start + 5 : current]
    after = current + 1 + wire[current]
    if after > end or after == current + 1:  # the hash: counted, 1 to 255 octets
        raise dns.exception.FormError
    return make(algorithm, flags, iterations, salt, wire[current + 1 : after], _windows(wire, after, end))


# NS, CNAME and SOA names may be compressed (a pointer's bytes say nothing without the message): their records
# are kept by the names as read, and the other bytes.


def _read_target(rdtype: int, wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> _Entry:
    target, current = _name(wire, start, end, memo, True)
    if current != end:
        raise dns.exception.FormError
    key = (rdtype, target.labels)
    return memo.records.get(key) or memo.keep(key, make(target))


def _read_soa(rdtype: int, wire: bytes, start: int, end: int, memo: _Memo, make: _Make) -> _Entry:
    mname, current = _name(wire, start, end, memo, True)
    rname, current = _name(wire, current, end, memo, True)
    if current + 20 != end:
        raise dns.exception.FormError
    key = (rdtype, mname.labels, rname.labels, wire[current:end])
    return memo.records.get(key) or memo.keep(key, make(mname, rname, *_SOA_FIELDS.unpack_from(wire, current)))


# Each hand-read type: the class whose from_wire_parser its reader mirrors, the reader, and a sample record.
# A type is read by hand only while its class still parses with that very function and the reader builds,
# for the sample, a record indistinguishable from dnspython's.
_SIG_TEXT = "A 13 2 300 20300101000000 20200101000000 12345 Example. AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
_HAND_READ: list[tuple[dns.rdatatype.RdataType, type[dns.rdata.Rdata], _Reader, str]] = [
    (dns.rdatatype.A, dns.rdtypes.IN.A.A, _read_a, "192.0.2.1"),
    (dns.rdatatype.AAAA, dns.rdtypes.IN.AAAA.AAAA, _read_aaaa, "2001:db8::ffff:1"),
    (dns.rdatatype.RRSIG, dns.rdtypes.rrsigbase.RRSIGBase, _read_rrsig, _SIG_TEXT),
    (dns.rdatatype.DS, dns.rdtypes.dsbase.DSBase, _read_ds, "12345 13 2 " + "ab" * 32),
    (dns.rdatatype.DNSKEY, dns.rdtypes.dnskeybase.DNSKEYBase, _read_dnskey, "257 3 13 AQIDBAUGBwgJCgsMDQ4PEA=="),
    (dns.rdatatype.NSEC, dns.rdtypes.ANY.NSEC.NSEC, _read_nsec, "Next.example. A NS SOA RRSIG NSEC TYPE1234"),
    (dns.rdatatype.NSEC3, dns.rdtypes.ANY.NSEC3.NSEC3, _read_nsec3, "1 1 0 abcd 2VPTU5TIMAMQTTGL4LUU9KG21E0AOR3S A"),
    (dns.rdatatype.NS, dns.rdtypes.nsbase.NSBase, _read_target, "Ns.example."),
    (dns.rdatatype.CNAME, dns.rdtypes.nsbase.NSBase, _read_target, "Alias.example."),
    (dns.rdatatype.SOA, dns.rdtypes.ANY.SOA.SOA, _read_soa, "Ns.example. Host.example. 1 2 3 4 5"),
]
# Types whose record depends on its bytes alone (A, AAAA, and types whose names dnspython reads with
# decompression off): equal bytes give an equal record, so the memo is keyed by bytes. NS, CNAME and SOA are
# keyed by their names as read (a pointer's bytes say nothing without the message).
_BY_BYTES = frozenset(
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


def _class_of(rdtype: dns.rdatatype.RdataType) -> type[dns.rdata.Rdata]:
    cls: type[dns.rdata.Rdata] = dns.rdata.get_rdata_class(_IN, rdtype)
    return cls


def _mirrors(cls: type[dns.rdata.Rdata], base: type[dns.rdata.Rdata]) -> bool:
    """Does ``cls`` still parse with the very ``from_wire_parser`` of ``base`` that a reader below mirrors?"""
    return getattr(cls.from_wire_parser, "__func__", None) is getattr(base.from_wire_parser, "__func__", 0)


def _read_sample(rdtype: int, reader: _Reader, make: _Make, rdata: bytes) -> dns.rdata.Rdata:
    return reader(rdtype, rdata, 0, len(rdata), _Memo(), make)[0]


def _hand_readers() -> dict[int, tuple[_Reader, _Make]]:
    readers: dict[int, tuple[_Reader, _Make]] = {}
    failed = []
    for rdtype, base, reader, text in _HAND_READ:
        cls = _class_of(rdtype)
        if not (issubclass(cls, base) and _mirrors(cls, base)) or (
            rdtype == dns.rdatatype.DS and not _DS_DIGEST_LENGTHS
        ):
            failed.append(f"{rdtype.name} (dnspython's class changed)")  # pragma: no cover - another dnspython
            continue  # pragma: no cover - another dnspython
        sample = dns.rdata.from_text(_IN, rdtype, text)
        wire = sample.to_wire() or b""
        builders = (_slot_builder(cls, rdtype), _constructor(cls, rdtype))
        for make in builders:
            try:
                ours = None if make is None else _read_sample(rdtype, reader, make, wire)
                agrees = fingerprint(ours) == fingerprint(sample)
            except Exception:  # pragma: no cover - another dnspython
                agrees = False
            if agrees and make is not None:
                readers[int(rdtype)] = reader, make
                if make is not builders[0]:  # pragma: no cover - another dnspython
                    failed.append(f"{rdtype.name} (built by its constructor, not slot by slot)")
                break
        else:
            failed.append(f"{rdtype.name} (the sample record differs)")  # pragma: no cover - another dnspython
    if failed:  # pragma: no cover - another dnspython
        log.warning(
            "hand-written wire parser disagrees with dnspython %s, falling back for: %s",
            dns.version.version,
            ", ".join(failed),
        )
    return readers


_READERS = _hand_readers()


# ----- hashing records -----------------------------------------------------------------------------------------
#
# A new record is hashed once, into the dict its RRsets copy. dnspython's ``Rdata.__hash__`` is the hash of
# ``to_digestable()``, which writes the record through its generic ``to_wire`` — a Name built per label for
# every name in it: ~12 µs for an RRSIG, ~40 µs for an SOA or NSEC, the largest item of parsing on a cold pass.
# The encoder (:mod:`ztdns.wire.encode`) writes the same canonical bytes in about a microsecond. A twin class
# (a subclass adding nothing but that ``__hash__``, same slots and layout) is swapped in for the moment the
# record is put in its dict, then swapped back: the record stays of dnspython's class, and the dict holds the
# value ``hash(record)`` gives. Checked when this module loads, per type on the sample records of the hand
# readers: a type whose twin hashes differently keeps dnspython's hashing.


def _twin(cls: type[dns.rdata.Rdata]) -> type[dns.rdata.Rdata]:
    encode = encoder_of_class(cls)

    def __hash__(self: dns.rdata.Rdata) -> int:
        out = bytearray()
        encode(out, self, None)
        return hash(bytes(out))

    return type(cls.__name__, (cls,), {"__slots__": (), "__hash__": __hash__, "__module__": __name__})


def _hashing_twins() -> dict[type[dns.rdata.Rdata], type[dns.rdata.Rdata]]:
    twins = {}
    for rdtype, _, _, text in _HAND_READ:
        sample = dns.rdata.from_text(_IN, rdtype, text)
        cls = type(sample)
        try:
            twin = _twin(cls)
            _set(sample, "__class__", twin)
            try:
                ours = hash(sample)
            finally:
                _set(sample, "__class__", cls)
            agrees = ours == hash(sample)
        except Exception:  # pragma: no cover - another dnspython
            agrees = False
        if agrees:
            twins[cls] = twin
        else:  # pragma: no cover - another dnspython
            log.warning("records of type %s are hashed by dnspython (slower)", rdtype.name)
    return twins


_TWINS.update(_hashing_twins())
_OPT_RECORD: Callable[..., dns.rdata.Rdata] = dns.rdtypes.ANY.OPT.OPT


def _dnspython_rdata(rdclass: int, rdtype: int, wire: bytes, start: int, length: int) -> dns.rdata.Rdata:
    return dns.rdata.from_wire(_CLASSES[rdclass], _TYPES[rdtype], wire, start, length)


def _record(rdclass: int, rdtype: int, wire: bytes, start: int, length: int, memo: _Memo) -> _Entry:
    """One record's data, as ``dns.rdata.from_wire`` gives it, in its entry."""
    end = start + length
    if end > len(wire):
        raise dns.exception.FormError
    if rdclass != _IN:
        return _entry(_dnspython_rdata(rdclass, rdtype, wire, start, length))
    hand = _READERS.get(rdtype)
    if hand is not None:
        return hand[0](rdtype, wire, start, end, memo, hand[1])
    if rdtype in _BY_BYTES:
        key = (rdtype, wire[start:end])
        return memo.records.get(key) or memo.keep(key, _dnspython_rdata(rdclass, rdtype, wire, start, length))
    return _entry(_dnspython_rdata(rdclass, rdtype, wire, start, length))


def _opt(rdclass: int, wire: bytes, start: int, length: int, memo: _Memo) -> _Entry:
    """The OPT record: its options are bytes, so it is kept by its payload size and bytes."""
    key = (_OPT, rdclass, wire[start : start + length])
    found = memo.records.get(key)
    if found is None:
        if length:
            rdata = _dnspython_rdata(rdclass, _OPT, wire, start, length)
        else:  # what OPT.from_wire_parser builds from no bytes
            rdata = _OPT_RECORD(_CLASSES[rdclass], _TYPES[_OPT], [])
        found = memo.keep(key, rdata)
    return found


# ----- RRsets ------------------------------------------------------------------------------------------------

_RRSET_SLOTS = ("items", "rdclass", "rdtype", "covers", "ttl", "name", "deleting")


def _built_rrset(
    name: dns.name.Name,
    rdclass: int,
    rdtype: int,
    covers: dns.rdatatype.RdataType,
    ttl: int,
    items: dict[dns.rdata.Rdata, None],
) -> dns.rrset.RRset:
    """``RRset(name, rdclass, rdtype, covers)`` holding ``items`` (records of its class, type and covers) with TTL
    ``ttl``, as ``add(record, ttl)`` for each leaves it."""
    rrset: dns.rrset.RRset = _new(dns.rrset.RRset)
    rrset.items = items
    rrset.rdclass = _CLASSES[rdclass]
    rrset.rdtype = _TYPES[rdtype]
    rrset.covers = covers
    rrset.ttl = ttl
    rrset.name = name
    rrset.deleting = None
    return rrset


def _rrsets_agree() -> bool:
    """Does ``_built_rrset`` build what RRset() and add() build (and are an RRset's records a dict of them)?"""
    if _slot_names(dns.rrset.RRset) != _RRSET_SLOTS:
        return False  # pragma: no cover - another dnspython
    name = dns.name.from_text("Example.")
    rdatas = [dns.rdata.from_text(_IN, dns.rdatatype.RRSIG, _SIG_TEXT.replace("12345", tag)) for tag in "12"]
    theirs = dns.rrset.RRset(name, _IN, dns.rdatatype.RRSIG, dns.rdatatype.A)
    for rdata in rdatas:
        theirs.add(rdata, 300)
    ours = _built_rrset(name, 1, 46, dns.rdatatype.A, 300, dict.fromkeys(rdatas))
    return fingerprint(ours) == fingerprint(theirs)


_RRSETS_AGREE = _rrsets_agree()
if not _RRSETS_AGREE:  # pragma: no cover - another dnspython
    log.warning(
        "hand-built RRsets differ from dnspython %s's; every response is parsed by dnspython (slower)",
        dns.version.version,
    )


# ----- messages ----------------------------------------------------------------------------------------------


def _read(wire: bytes, memo: _Memo) -> dns.message.Message:
    """``dns.message._WireReader.read`` for a QUERY-opcode message without TSIG, with default options."""
    if not _RRSETS_AGREE:
        raise _Unsupported("RRsets")  # pragma: no cover - another dnspython
    size = len(wire)
    if size < 12:
        raise dns.message.ShortHeader
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & _OPCODE_BITS:  # an opcode other than QUERY (0): read as an int, not through dnspython's enum
        raise _Unsupported("opcode")
    message = dns.message.QueryMessage(id=ident)
    message.flags = _FLAGS[flags]
    message.wire = wire
    current = 12
    question = message.question
    index = message.index
    for _ in range(qdcount):
        name, current = _name(wire, current, size, memo, True)
        if current + 4 > size:
            raise dns.exception.FormError
        rdtype, rdclass = _QUESTION.unpack_from(wire, current)
        current += 4
        # find_rrset(question, name, rdclass, rdtype, create=True, force_unique=True)
        asked = _built_rrset(name, rdclass, rdtype, _NONE, 0, {})
        question.append(asked)
        index[(_QUESTION_SECTION, name, asked.rdclass, asked.rdtype, _NONE, None)] = asked
    # Records join the RRset of equal name (case-insensitively), class, type and covered type, as find_rrset
    # does through the message's index; looked up here by lower-cased labels rather than by Name (a Name hashes
    # and compares in Python, character by character), and entered in the index once per RRset.
    rrsets: dict[tuple[int, tuple[bytes, ...], int, int, int], dns.rrset.RRset] = {}
    for number, count in ((_ANSWER, ancount), (_AUTHORITY, nscount), (_ADDITIONAL, arcount)):
        section = message.sections[number]
        for _ in range(count):
            (name, folded), current = _folded_name(wire, current, size, memo, True)
            if current + 10 > size:
                raise dns.exception.FormError
            rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, current)
            current += 10
            if rdtype == _TSIG:
                raise _Unsupported("TSIG")
            if rdtype == _OPT:
                if number != 3 or message.opt is not None or folded != (b"",):
                    raise dns.message.BadEDNS
                if current + rdlen > size:
                    raise dns.exception.FormError
                _, items, _ = _opt(rdclass, wire, current, rdlen, memo)
                current += rdlen
                message.opt = _built_rrset(name, rdclass, _OPT, _NONE, ttl, items.copy())  # as rrset.from_rdata
                continue
            _, items, covers = _record(rdclass, rdtype, wire, current, rdlen, memo)
            current += rdlen
            if ttl > 0x7FFFFFFF:
                ttl = 0
            key = (number, folded, rdclass, rdtype, covers)
            rrset = rrsets.get(key)
            if rrset is None:
                # items.copy(): the entry's dict with the record's hash, so the record is not hashed again
                rrset = rrsets[key] = _built_rrset(name, rdclass, rdtype, covers, ttl, items.copy())
                section.append(rrset)
                index[(number, name, rrset.rdclass, rrset.rdtype, covers, None)] = rrset
                continue
            # Rdataset.add, for a record of the RRset's own class, type and covered type: the TTL minimised,
            # singleton types replaced, equal records kept once (the first one, as update() keeps a present key).
            rrset.ttl = min(rrset.ttl, ttl)
            if dns.rdatatype.is_singleton(rdtype):
                rrset.items.clear()
            rrset.items.update(items)
    if current != size:
        raise dns.message.TrailingJunk
    return message
