"""Trust anchors (built-in root KSKs, files of DS or DNSKEY records) and negative trust anchors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zonefile
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS

from ztdns.dnssec.names import ancestry, wire_key

# IANA root zone KSKs: KSK-2017 (20326) and KSK-2024 (38696), from https://data.iana.org/root-anchors/.
ROOT_ANCHORS = (
    ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    ". IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
)


class TrustAnchorError(ValueError):
    pass


@dataclass
class Anchor:
    """What a zone's DNSKEY set must match: any of these DS records or DNSKEY records."""

    zone: dns.name.Name
    ds: list[DS] = field(default_factory=list)
    dnskey: list[DNSKEY] = field(default_factory=list)


@dataclass
class TrustAnchors:
    """Positive and negative anchors; add positive ones with :meth:`add_text` (it keeps the lookup index)."""

    anchors: dict[dns.name.Name, Anchor] = field(default_factory=dict)
    negative: frozenset[dns.name.Name] = frozenset()

    def __post_init__(self) -> None:
        # closest() runs for every validated RRset: it looks names up by their wire keys.
        self._by_key = {wire_key(name): anchor for name, anchor in self.anchors.items()}
        self._negative_keys = frozenset(wire_key(name) for name in self.negative)

    @classmethod
    def load(
        cls, texts: Iterable[str] | None = None, files: Iterable[Path] = (), negative: Iterable[str] = ()
    ) -> TrustAnchors:
        """``texts`` plus files in zone presentation format. Without ``texts``: the files alone, or the built-in
        root anchors when there are no files — configured anchors replace the built-in ones (a private root, a lab,
        an island of trust); a file holding the IANA root DS adds the root back."""
        files = list(files)
        if texts is None:
            texts = () if files else ROOT_ANCHORS
        anchors = cls(negative=frozenset(dns.name.from_text(name) for name in negative))
        anchors.add_text("\n".join(texts), "built-in anchors")
        for path in files:
            try:
                text = path.read_text()
            except OSError as exc:
                raise TrustAnchorError(f"{path}: {exc.strerror}") from None
            anchors.add_text(text, str(path))
        return anchors

    def add_text(self, text: str, source: str) -> None:
        try:
            rrsets = dns.zonefile.read_rrsets(text, default_ttl=3600, rdclass=None)
        except dns.exception.DNSException as exc:
            raise TrustAnchorError(f"{source}: {exc}") from None
        for rrset in rrsets:
            if rrset.rdtype not in (dns.rdatatype.DS, dns.rdatatype.DNSKEY):
                raise TrustAnchorError(
                    f"{source}: {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} is neither DS nor DNSKEY"
                )
            anchor = self.anchors.setdefault(rrset.name, Anchor(rrset.name))
            self._by_key[wire_key(rrset.name)] = anchor
            for rdata in rrset:
                if isinstance(rdata, DS):
                    anchor.ds.append(rdata)
                elif isinstance(rdata, DNSKEY):
                    anchor.dnskey.append(rdata)

    def negated(self, name: dns.name.Name) -> bool:
        """True when a negative trust anchor sits at or above ``name``: the operator turned validation off there."""
        return any(candidate in self._negative_keys for candidate in ancestry(name))

    def closest(self, name: dns.name.Name) -> Anchor | None:
        """The deepest anchor at or above ``name``, unless a negative trust anchor sits at or below it."""
        for candidate in ancestry(name):
            if candidate in self._negative_keys:
                return None
            anchor = self._by_key.get(candidate)
            if anchor is not None:
                return anchor
        return None
