"""Dynamic registration over RFC 2136 with TSIG: an identity registers its own names only; refused updates
leave
the zone (and its serial) unchanged; accepted ones advance the serial and are served signed at once."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update

from authority_lab import ORIGIN, keyring, serving, signed_zone
from ztdns.authority.handler import Authority
from ztdns.authority.update import Grant

GRANT = Grant("spiffe://corp/ns/{ns}/sa/{sa}", ("{sa}.{ns}.svc.corp.internal",))
WEB = "spiffe://corp/ns/prod/sa/web"


def _update(port: int, name: str, address: str, keyname: str | None = "web-key.") -> int:
    key = dns.name.from_text(keyname) if keyname else None
    update = dns.update.UpdateMessage(ORIGIN, keyring=keyring() if keyname else None, keyname=key)
    update.replace(name, 30, "A", address)
    response = dns.query.tcp(update, "127.0.0.1", port=port, timeout=5)
    return response.rcode()


def _serial(port: int) -> int:
    response = dns.query.udp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1", port=port, timeout=5)
    serial: int = response.answer[0][0].serial
    return serial


def test_identity_registers_its_own_name_only(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(GRANT,), state_path=tmp_path / "corp.dynamic.json")
    authority = Authority([zone], keyring=keyring(), identities={dns.name.from_text("web-key."): WEB})
    with serving(authority) as (_, server):
        port = server.port
        before = _serial(port)
        assert _update(port, "web.prod.svc.corp.internal.", "10.1.2.3") == dns.rcode.NOERROR
        after = _serial(port)
        assert after == before + 1
        query = dns.message.make_query("web.prod.svc.corp.internal.", "A", want_dnssec=True)
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
        assert response.answer[0][0].address == "10.1.2.3"
        dnskey = zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
        dns.dnssec.validate(response.answer[0], response.answer[1], {ORIGIN: dnskey})  # type: ignore[dict-item]

        # Another service's name, a name outside the grant, and an unsigned update: all refused, zone
        # unchanged.
        assert _update(port, "db.prod.svc.corp.internal.", "10.6.6.6") == dns.rcode.REFUSED
        assert _update(port, "web.dev.svc.corp.internal.", "10.6.6.6") == dns.rcode.REFUSED
        assert _update(port, "www.corp.internal.", "10.6.6.6") == dns.rcode.REFUSED
        assert _update(port, "web.prod.svc.corp.internal.", "10.6.6.6", keyname=None) == dns.rcode.REFUSED
        assert _serial(port) == after
        assert authority.stats.updates_refused == 4
        response = dns.query.udp(dns.message.make_query("db.prod.svc.corp.internal.", "A"), "127.0.0.1", port=port)
        assert response.rcode() == dns.rcode.NXDOMAIN

    # A restart keeps the registration and the serial.
    again = signed_zone(tmp_path, grants=(GRANT,), state_path=tmp_path / "corp.dynamic.json")
    assert again.base.serial == after
    assert again.base.get(dns.name.from_text("web.prod.svc.corp.internal."), dns.rdatatype.A) is not None


def test_mixed_update_is_all_or_nothing(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(GRANT,))
    authority = Authority([zone], keyring=keyring(), identities={dns.name.from_text("web-key."): WEB})
    update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("web-key."))
    update.add("web.prod.svc", 30, "A", "10.0.0.1")
    update.add("api.prod.svc", 30, "A", "10.0.0.2")
    from ztdns.client import ClientInfo, Transport

    wires = authority.respond(update.to_wire(), ClientInfo(Transport.TCP, "127.0.0.1", 1, stream=True))
    response = dns.message.from_wire(wires[0], keyring=keyring(), request_mac=update.mac)
    assert response.rcode() == dns.rcode.REFUSED
    assert dns.name.from_text("web.prod.svc.corp.internal.") not in zone.base.nodes


def test_grant_templates() -> None:
    grant = Grant("spiffe://corp/ns/{ns}/sa/{sa}", ("{sa}.{ns}.svc.corp.internal", "**.{sa}.{ns}.svc.corp.internal"))
    name = dns.name.from_text
    assert grant.allows(WEB, name("web.prod.svc.corp.internal."), dns.rdatatype.A)
    assert grant.allows(WEB, name("a.b.web.prod.svc.corp.internal."), dns.rdatatype.AAAA)
    assert not grant.allows(WEB, name("web.prod.svc.corp.internal."), dns.rdatatype.NS)
    assert not grant.allows("spiffe://corp/ns/prod/sa/web/extra", name("web.prod.svc.corp.internal."), 1)
    assert not grant.allows("spiffe://corp/ns/a.b/sa/web", name("web.a.b.svc.corp.internal."), 1)
