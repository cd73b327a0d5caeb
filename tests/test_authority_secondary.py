"""Knot DNS as a secondary: transfers the signed zone over AXFR with TSIG, follows our NOTIFY after a dynamic
update, and serves answers whose signatures validate against our DNSKEYs."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from authority_lab import ORIGIN, TSIG_SECRET, free_port, keyring, need, serving, signed_zone
from ztdns.authority.handler import Authority
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.update import Grant

pytestmark = pytest.mark.slow


def _serial(port: int) -> int | None:
    try:
        response = dns.query.udp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except Exception:
        return None
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return None
    serial: int = response.answer[0][0].serial
    return serial


def _wait_serial(port: int, serial: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _serial(port) == serial:
            return
        time.sleep(0.2)
    raise AssertionError(f"secondary never reached serial {serial} (has {_serial(port)})")


def test_knot_secondary_transfers_with_tsig_and_serves_valid_signatures(tmp_path: Path) -> None:
    need("knotd")
    knot_port = free_port()
    zone = signed_zone(
        tmp_path / "state",
        transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})),
        notify=(("127.0.0.1", knot_port),),
        grants=(Grant("tsig:xfr.", ("**.svc.corp.internal",)),),
    )
    with serving(Authority([zone], keyring=keyring())) as (_, server):
        (tmp_path / "knot.conf").write_text(
            textwrap.dedent(f"""
            server:
              listen: 127.0.0.1@{knot_port}
              rundir: {tmp_path}
            database:
              storage: {tmp_path}/knotdb
            key:
              - id: xfr
                algorithm: hmac-sha256
                secret: {TSIG_SECRET}
            remote:
              - id: primary
                address: 127.0.0.1@{server.port}
                key: xfr
            acl:
              - id: notify_from_primary
                address: 127.0.0.1
                action: notify
            zone:
              - domain: corp.internal
                storage: {tmp_path}
                file: secondary.zone
                master: primary
                acl: notify_from_primary
            """)
        )
        knot = subprocess.Popen(
            ["knotd", "-c", str(tmp_path / "knot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_serial(knot_port, zone.zone.serial)
            update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("xfr."))
            update.add("db.svc", 30, "A", "10.9.9.9")
            assert dns.query.tcp(update, "127.0.0.1", port=server.port, timeout=5).rcode() == dns.rcode.NOERROR
            _wait_serial(knot_port, zone.zone.serial)  # NOTIFY → SOA check → AXFR

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
        finally:
            knot.terminate()
            knot.wait()
