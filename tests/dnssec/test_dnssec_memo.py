"""The validator's byte-level shortcuts give dnspython's answers, and its memos are bounded and keyed on everything
that changes an answer (names in any case, salts, iterations, keys, negative trust anchors)."""

from __future__ import annotations

import base64
import hashlib

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from dns.dnssectypes import Algorithm, DSDigest
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from ztdns.dnssec import denial, names, validator
from ztdns.dnssec.names import ancestry, canonical_key, common_labels, is_child, wire_key
from ztdns.dnssec.trust import TrustAnchors
from ztdns.lab.sign import generate_key

_NAMES = [
    ".",
    "example.",
    "EXAMPLE.",
    "a.example.",
    "yljkjljk.a.example.",
    "Z.a.example.",
    "zABC.a.EXAMPLE.",
    "z.example.",
    "\\001.z.example.",
    "*.z.example.",
    "\\200.z.example.",
    "a\\.b.example.",
    "a.b.example.",
    "ab.example.",
    "a\\000.example.",
    "example.com.",
]


def _dnskey(flags: int, algorithm: int, key: bytes) -> DNSKEY:
    return DNSKEY(dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, 3, algorithm, key)


@pytest.mark.parametrize(
    "key",
    [
        generate_key(Algorithm.ECDSAP256SHA256, True).dnskey,
        generate_key(Algorithm.ECDSAP256SHA256, False).dnskey,
        generate_key(Algorithm.RSASHA256, True).dnskey,
        _dnskey(257, 8, b"\xff" * 257),  # odd RDATA length: the last byte is a high byte
        _dnskey(256, 13, b"\xff" * 64),  # the carry fold
        _dnskey(256, 1, b"\x01\x02\x03\x04\x05"),  # RSAMD5: taken from the modulus
    ],
)
def test_key_tag_and_ds_digests_are_dnspythons(key: DNSKEY) -> None:
    rdata = validator.dnskey_rdata(key)
    assert rdata == key.to_wire()
    assert validator.key_tag(rdata, key.algorithm) == dns.dnssec.key_id(key)
    for zone in (dns.name.from_text("Example.COM."), dns.name.root):
        for digest_type in (DSDigest.SHA1, DSDigest.SHA256, DSDigest.SHA384):
            made = dns.dnssec.make_ds(zone, key, digest_type, policy=dns.dnssec.allow_all_policy)
            assert validator.ds_digest(zone, rdata, digest_type) == made.digest


def test_canonical_key_orders_as_dnspython() -> None:
    names = [dns.name.from_text(text) for text in _NAMES]
    assert sorted(names, key=canonical_key) == sorted(names)
    for first in names:
        for second in names:
            assert (canonical_key(first) == canonical_key(second)) == (first == second)
            assert (wire_key(first) == wire_key(second)) == (first == second)


def test_canonical_key_memo_answers_per_labels_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "_CANONICAL_MAX", 4)
    names._canonical.clear()
    for text in _NAMES * 2:  # the second round from the memo (or after it started over)
        name = dns.name.from_text(text)
        assert canonical_key(name) == tuple(label.lower() for label in reversed(name.labels))
        assert len(names._canonical) <= 4


def test_common_labels_is_fullcompares_count() -> None:
    parsed = [dns.name.from_text(text) for text in _NAMES]
    for first in parsed:
        for second in parsed:
            assert common_labels(first, second) == first.fullcompare(second)[2]


def test_ancestry_and_child() -> None:
    name = dns.name.from_text("www.Example.com.")
    assert ancestry(name) == [
        wire_key(dns.name.from_text(n)) for n in ("www.example.com.", "example.com.", "com.", ".")
    ]
    assert ancestry(dns.name.root) == [b"\x00"]
    assert is_child(name, dns.name.from_text("EXAMPLE.com."))
    assert not is_child(name, dns.name.from_text("com."))
    assert is_child(dns.name.from_text("x\\.www.example.com."), dns.name.from_text("example.com."))  # one label
    assert not is_child(dns.name.from_text("x.www.example.com."), dns.name.from_text("example.com."))
    assert not is_child(dns.name.root, dns.name.root)


@pytest.mark.parametrize("salt", [b"", b"\xab\xcd", b"\x00" * 16])
@pytest.mark.parametrize("iterations", [0, 1, 12])
def test_nsec3_hash_is_dnspythons_and_keyed_on_salt_and_iterations(salt: bytes, iterations: int) -> None:
    for text in _NAMES:
        name = dns.name.from_text(text)
        expected = base64.b32hexdecode(dns.dnssec.nsec3_hash(name, salt, iterations, 1))
        # Twice: the second comes from the memo, which must not answer for other parameters.
        assert denial.nsec3_hash(wire_key(name), salt, iterations) == expected
        assert denial.nsec3_hash(wire_key(name), salt, iterations) == expected
    name = dns.name.from_text("a.example.")
    assert denial.nsec3_hash(wire_key(name), salt + b"\x01", iterations) != denial.nsec3_hash(
        wire_key(name), salt, iterations
    )
    assert denial.nsec3_hash(wire_key(name), salt, iterations + 1) != denial.nsec3_hash(
        wire_key(name), salt, iterations
    )


def test_nsec3_hash_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denial, "_NSEC3_HASHES_MAX", 8)
    denial._nsec3_hashes.clear()
    for index in range(50):
        owner = wire_key(dns.name.from_text(f"n{index}.example."))
        assert denial.nsec3_hash(owner, b"", 0) == hashlib.sha1(owner, usedforsecurity=False).digest()
        assert len(denial._nsec3_hashes) <= 8


@pytest.mark.parametrize(
    "label",
    [b"", b"0123456789abcdefghijklmnopqrstuv", b"VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV", b"00000000", b"ck======"],
)
def test_owner_hash_reads_base32hex_as_the_standard_library(label: bytes) -> None:
    assert denial.owner_hash(label) == base64.b32hexdecode(label.upper())


@pytest.mark.parametrize("label", [b"wwwwwwww", b"0123456", b" 1234567", b"1_234567", b"+1234567", b"-1234567"])
def test_owner_hash_refuses_what_the_standard_library_refuses(label: bytes) -> None:
    with pytest.raises(ValueError):
        base64.b32hexdecode(label.upper())
    with pytest.raises(ValueError):
        denial.owner_hash(label)


def test_public_key_memo_is_keyed_on_the_key_and_bounded() -> None:
    cache = validator._KeyCache(limit=2)
    keys = [generate_key(Algorithm.ECDSAP256SHA256, False).dnskey for _ in range(3)]
    parsed = [cache.public_key(key, validator.dnskey_rdata(key)) for key in keys]
    assert len(cache.public) <= 2
    for key, public in zip(keys, parsed, strict=True):
        assert public is not None and public.encode_key_bytes() == key.key
    # Same key bytes, other flags: another RDATA, another entry (a revoked key is not the same key).
    revoked = _dnskey(int(keys[0].flags) | 0x0080, keys[0].algorithm, keys[0].key)
    assert validator.dnskey_rdata(revoked) != validator.dnskey_rdata(keys[0])
    broken = _dnskey(256, 13, b"\x00" * 64)  # not a point on the curve
    assert cache.public_key(broken, validator.dnskey_rdata(broken)) is None


def test_closest_anchor_honours_negative_anchors_and_case() -> None:
    anchors = TrustAnchors.load(
        texts=(". IN DS 20326 8 2 " + "AA" * 32, "Corp.Example. IN DS 1 13 2 " + "BB" * 32),
        negative=("broken.corp.example.",),
    )
    root, corp = anchors.anchors[dns.name.root], anchors.anchors[dns.name.from_text("corp.example.")]
    assert anchors.closest(dns.name.from_text("www.example.")) is root
    assert anchors.closest(dns.name.from_text("WWW.CORP.example.")) is corp
    assert anchors.closest(dns.name.from_text("corp.example.")) is corp
    assert anchors.closest(dns.name.from_text("x.Broken.corp.example.")) is None
    assert anchors.closest(dns.name.from_text("broken.corp.example.")) is None
    assert anchors.closest(dns.name.from_text("unbroken.corp.example.")) is corp
    anchors.add_text("lab. IN DS 2 13 2 " + "CC" * 32, "later")
    assert anchors.closest(dns.name.from_text("www.lab.")) is anchors.anchors[dns.name.from_text("lab.")]
    without_root = TrustAnchors.load(texts=("corp.example. IN DS 1 13 2 " + "BB" * 32,))
    assert without_root.closest(dns.name.from_text("www.example.")) is None
