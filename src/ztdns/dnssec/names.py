"""Names as bytes for the validator's lookups: a ``dns.name.Name`` hashes, compares and finds its parent in
Python loops over its labels, and validation asks those questions of every name it meets many times over.

The keys here are built from the encoder's cached wire forms (:func:`ztdns.wire.encode.name_forms`) and compare in C.
Equality is dnspython's (ASCII case-insensitive); names must be absolute, as every name from the wire is.
"""

from __future__ import annotations

import dns.name

from ztdns.wire.encode import name_forms

ROOT = b"\x00"  # the root's key


def wire_key(name: dns.name.Name) -> bytes:
    """The name's lower-cased wire form: equal for names dnspython calls equal."""
    return name_forms(name).lower


def ancestry(name: dns.name.Name) -> list[bytes]:
    """The keys of ``name`` and of each of its ancestors: index ``i`` is the name without its first ``i`` labels
    (the last is the root)."""
    keys = [suffix for _, suffix in name_forms(name).suffixes]
    keys.append(ROOT)
    return keys


def is_child(name: dns.name.Name, zone: dns.name.Name) -> bool:
    """Is ``name`` exactly one label below ``zone``? (Its key past the first label is the zone's.)"""
    key = name_forms(name).lower
    return key[key[0] + 1 :] == name_forms(zone).lower


def canonical_key(name: dns.name.Name) -> tuple[bytes, ...]:
    """A sort key for the DNSSEC canonical order (RFC 4034 §6.1), as dnspython orders absolute names: the
    lower-cased labels from the root down, compared as a tuple of bytes. Remembered per labels: denial proofs
    ask it of the same few owners again and again."""
    labels = name.labels
    key = _canonical.get(labels)
    if key is None:
        if len(_canonical) >= _CANONICAL_MAX:
            _canonical.clear()
        key = _canonical[labels] = tuple([label.lower() for label in reversed(labels)])
    return key


def common_labels(name: dns.name.Name, other: dns.name.Name) -> int:
    """How many labels the names share from the root down, the root included: ``name.fullcompare(other)[2]``
    for absolute names, without building the comparison's other results."""
    count = 0
    for mine, theirs in zip(canonical_key(name), canonical_key(other), strict=False):
        if mine != theirs:
            break
        count += 1
    return count


_canonical: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
_CANONICAL_MAX = 20_000
