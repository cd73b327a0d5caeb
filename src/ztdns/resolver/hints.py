"""Root hints: the IANA root servers built in (from named.root), or a zone-format file."""

from __future__ import annotations

from pathlib import Path

import dns.exception
import dns.name
import dns.rdatatype
import dns.zonefile

IANA_ROOT_HINTS = "\n".join(
    f". 3600000 NS {letter}.ROOT-SERVERS.NET.\n"
    f"{letter}.ROOT-SERVERS.NET. 3600000 A {v4}\n{letter}.ROOT-SERVERS.NET. 3600000 AAAA {v6}"
    for letter, v4, v6 in (
        ("A", "198.41.0.4", "2001:503:ba3e::2:30"),
        ("B", "170.247.170.2", "2801:1b8:10::b"),
        ("C", "192.33.4.12", "2001:500:2::c"),
        ("D", "199.7.91.13", "2001:500:2d::d"),
        ("E", "192.203.230.10", "2001:500:a8::e"),
        ("F", "192.5.5.241", "2001:500:2f::f"),
        ("G", "192.112.36.4", "2001:500:12::d0d"),
        ("H", "198.97.190.53", "2001:500:1::53"),
        ("I", "192.36.148.17", "2001:7fe::53"),
        ("J", "192.58.128.30", "2001:503:c27::2:30"),
        ("K", "193.0.14.129", "2001:7fd::1"),
        ("L", "199.7.83.42", "2001:500:9f::42"),
        ("M", "202.12.27.33", "2001:dc3::35"),
    )
)


class HintsError(ValueError):
    pass


def parse_hints(text: str, source: str = "root hints") -> list[tuple[dns.name.Name, str]]:
    """(root server name, address) pairs for every address of every root NS in ``text``."""
    try:
        rrsets = dns.zonefile.read_rrsets(text, default_ttl=3600000, rdclass=None)
    except dns.exception.DNSException as exc:
        raise HintsError(f"{source}: {exc}") from None
    servers = [rdata.target for r in rrsets if r.rdtype == dns.rdatatype.NS and r.name == dns.name.root for rdata in r]
    addresses = [
        (r.name, rdata.address)
        for r in rrsets
        if r.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in r
        if r.name in servers
    ]
    if not addresses:
        raise HintsError(f"{source}: no addresses for root name servers")
    return addresses


def load_hints(path: str | None) -> list[tuple[dns.name.Name, str]]:
    if path is None:
        return parse_hints(IANA_ROOT_HINTS, "built-in IANA hints")
    try:
        return parse_hints(Path(path).read_text(), path)
    except OSError as exc:
        raise HintsError(f"{path}: {exc.strerror}") from None
