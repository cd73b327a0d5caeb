"""Every change of signed content is a new zone version: re-signing, key events, edits and restarts raise the
serial (by the zone's serial policy) and NOTIFY, so a secondary never serves an expired signature."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from authority_lab import ZONE_TEXT, keyring, knot_secondary, serving, signed_zone
from fixtures.unbound import free_port
from ztdns.authority.handler import Authority
from ztdns.authority.signing import Validity
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.zone import next_serial


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_serial_policies() -> None:
    now = calendar.timegm((2026, 12, 7, 16, 0, 0))
    assert next_serial(7) == 8
    assert next_serial(0xFFFFFFFF) == 1
    assert next_serial(7, "unixtime", now) == now
    assert next_serial(now + 5, "unixtime", now) == now + 6  # never back
    assert next_serial(7, "dateserial", now) == 2026120700
    assert next_serial(2026120700, "dateserial", now) == 2026120701
    assert next_serial(2026120799, "dateserial", now) == 2026120800


def test_resigning_raises_the_serial_and_restart_keeps_the_refresh_time(tmp_path: Path) -> None:
    clock = Clock()
    validity = Validity(lifetime=1000, jitter=0, refresh=400)
    zone = signed_zone(tmp_path, validity=validity, state_path=tmp_path / "z.dynamic.json")
    zone.clock = clock
    assert zone.signer is not None
    zone.signer.clock = clock
    authority = Authority([zone], clock=clock)
    serial = zone.zone.serial
    list(zone.transfer_records())  # signatures handed out (to a secondary)
    assert authority.tick() == []
    clock.now += 599
    assert authority.tick() == [] and zone.zone.serial == serial
    clock.now += 2  # past expiry - refresh: a new version with fresh signatures
    assert authority.tick() == [zone]
    assert zone.zone.serial == next_serial(serial)
    expirations = {sig[0].expiration for sig in zone.transfer_records() if sig.rdtype == dns.rdatatype.RRSIG}
    assert min(expirations) >= clock.now + 999
    assert authority.tick() == []

    # A restart (new process, new signature cache) knows when the signatures handed out are due.
    clock.now += 700
    restarted = signed_zone(tmp_path, validity=validity, state_path=tmp_path / "z.dynamic.json")
    restarted.clock = clock
    assert restarted.zone.serial == zone.zone.serial
    assert Authority([restarted], clock=clock).tick() == [restarted]
    assert restarted.zone.serial == next_serial(zone.zone.serial)


def test_restart_with_edited_source_or_key_event_raises_the_serial(tmp_path: Path) -> None:
    state = tmp_path / "z.dynamic.json"
    first = signed_zone(tmp_path, state_path=state, source="a")
    serial = first.zone.serial
    same = signed_zone(tmp_path, state_path=state, source="a")
    assert same.zone.serial == serial
    edited = signed_zone(tmp_path, ZONE_TEXT + "new A 192.0.2.99\n", state_path=state, source="b")
    assert edited.zone.serial == next_serial(serial)
    assert edited.keys is not None
    edited.keys.rollover("zsk", 300)  # while "stopped": the next start publishes another DNSKEY set
    rolled = signed_zone(tmp_path, ZONE_TEXT + "new A 192.0.2.99\n", state_path=state, source="b")
    assert rolled.zone.serial == next_serial(next_serial(serial))


def _expirations(port: int) -> tuple[int, list[int]]:
    found: list[int] = []
    serial = 0
    for name, rdtype in (("www.corp.internal.", "A"), ("corp.internal.", "SOA"), ("nope.corp.internal.", "A")):
        response = dns.query.udp(
            dns.message.make_query(name, rdtype, want_dnssec=True), "127.0.0.1", port=port, timeout=1
        )
        for rrset in response.answer + response.authority:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                found.extend(sig.expiration for sig in rrset)
            elif rrset.rdtype == dns.rdatatype.SOA:
                serial = rrset[0].serial
    return serial, found


@pytest.mark.slow
def test_knot_secondary_never_serves_an_expired_signature(tmp_path: Path) -> None:
    """Signatures living 6 s (refreshed 3 s before expiry): knotd, which never re-signs, keeps serving valid
    ones for 15 s because every refresh is a new serial with a NOTIFY."""
    knot_port = free_port()
    zone = signed_zone(
        tmp_path / "state",
        transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})),
        notify=(("127.0.0.1", knot_port),),
        validity=Validity(lifetime=6, jitter=0, refresh=3),
    )
    with serving(Authority([zone], keyring=keyring())) as (_, server), knot_secondary(tmp_path, knot_port, server.port):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if _expirations(knot_port)[1]:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        serials = set()
        end = time.monotonic() + 15
        while time.monotonic() < end:
            serial, expirations = _expirations(knot_port)
            serials.add(serial)
            assert expirations
            assert min(expirations) > time.time(), f"knotd serves an expired RRSIG at serial {serial}"
            time.sleep(0.25)
        assert len(serials) >= 3
