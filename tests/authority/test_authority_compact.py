"""Compact denial (RFC 9824): the CO flag gets NXDOMAIN; compact-denial zones are never transferred (a
secondary could not prove non-existence) and a config that would transfer one is refused."""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from pydantic import ValidationError

from authority_lab import ORIGIN, keyring, signed_zone
from ztdns.authority.answer import EDNS_CO
from ztdns.authority.handler import Authority
from ztdns.authority.transfer import TransferAcl
from ztdns.client import ClientInfo, Transport
from ztdns.config.authority import AuthZoneConfig

UDP = ClientInfo(Transport.UDP, "127.0.0.1", 1)


def _ask(authority: Authority, co: bool) -> dns.message.Message:
    query = dns.message.make_query("nope.corp.internal.", "A", want_dnssec=True)
    if co:
        query.ednsflags |= EDNS_CO
    wire = authority.fast(query.to_wire(), UDP)
    assert wire
    return dns.message.from_wire(wire)


def test_co_flag_gets_nxdomain_with_the_compact_proof(tmp_path: Path) -> None:
    authority = Authority([signed_zone(tmp_path, denial="compact")])
    for _ in range(2):  # the second time from replays, where they apply
        plain = _ask(authority, co=False)
        assert plain.rcode() == dns.rcode.NOERROR and not plain.ednsflags & EDNS_CO
        compact = _ask(authority, co=True)
        assert compact.rcode() == dns.rcode.NXDOMAIN and compact.ednsflags & EDNS_CO
        nsec = [r for r in compact.authority if r.rdtype == dns.rdatatype.NSEC]
        assert nsec and dns.rdatatype.NXNAME in [t for w in nsec[0][0].windows for t in _types(w)]


def _types(window: tuple[int, bytes]) -> list[int]:
    base, bitmap = window
    return [base * 256 + i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte & (0x80 >> b)]


def test_compact_zones_are_not_transferred(tmp_path: Path) -> None:
    xfr = dns.name.from_text("xfr.")
    authority = Authority(
        [signed_zone(tmp_path, denial="compact", transfer=TransferAcl(keys=frozenset({xfr})))], keyring=keyring()
    )
    query = dns.message.make_query(ORIGIN, "AXFR")
    query.use_tsig(keyring(), xfr)
    (wire,) = authority.respond(query.to_wire(), ClientInfo(Transport.TCP, "127.0.0.1", 1, stream=True))
    assert dns.message.from_wire(wire, keyring=keyring(), request_mac=query.mac).rcode() == dns.rcode.REFUSED
    with pytest.raises(ValidationError, match="compact denial"):
        AuthZoneConfig.model_validate(
            {"name": "corp.internal", "notify": ["10.0.0.2"], "signing": {"denial": "compact"}}
        )
