"""Knot DNS as a secondary: transfers the signed zone over AXFR with TSIG, follows our NOTIFY after a dynamic
update, and serves answers whose signatures validate against our DNSKEYs."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from authority_lab import ORIGIN, keyring, knot_secondary, serving, signed_zone, wait_serial
from fixtures.unbound import free_port
from ztdns.authority.handler import Authority
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.update import Grant

pytestmark = pytest.mark.slow


def test_knot_secondary_transfers_with_tsig_and_serves_valid_signatures(tmp_path: Path) -> None:
    knot_port = free_port()
    zone = signed_zone(
        tmp_path / "state",
        transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})),
        notify=(("127.0.0.1", knot_port),),
        grants=(Grant("tsig:xfr.", ("**.svc.corp.internal",)),),
    )
    with (
        serving(Authority([zone], keyring=keyring())) as (_, server),
        knot_secondary(tmp_path, knot_port, server.port),
    ):
        wait_serial(knot_port, zone.zone.serial)
        update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("xfr."))
        update.add("db.svc", 30, "A", "10.9.9.9")
        assert dns.query.tcp(update, "127.0.0.1", port=server.port, timeout=5).rcode() == dns.rcode.NOERROR
        wait_serial(knot_port, zone.zone.serial)  # NOTIFY → SOA check → AXFR

        dnskey = zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
        for name, rdtype in [("db.svc.corp.internal.", "A"), ("nope.corp.internal.", "A")]:
            query = dns.message.make_query(name, rdtype, want_dnssec=True)
            response = dns.query.udp(query, "127.0.0.1", port=knot_port, timeout=3)
            sections = response.answer + response.authority
            sigs = {(r.name, r.covers): r for r in sections if r.rdtype == dns.rdatatype.RRSIG}
            data = [r for r in sections if r.rdtype != dns.rdatatype.RRSIG]
            assert data, response
            for rrset in data:
                dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], {ORIGIN: dnskey})  # type: ignore[dict-item]
