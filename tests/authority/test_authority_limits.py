"""max_zone_ttl on every input path (zone file, UPDATE, registration API) and as the rollover timing TTL;
per-identity quotas on registrations."""

from __future__ import annotations

import json
from pathlib import Path

import dns.name
import dns.rcode
import dns.update
import pytest

from authority_lab import ORIGIN, ZONE_TEXT, signed_zone
from ztdns.authority.api import registration_response
from ztdns.authority.handler import Authority, Quota
from ztdns.authority.update import Grant
from ztdns.authority.zone import ZoneError

ID = "spiffe://corp.example/ns/prod/web"
GRANT = Grant("spiffe://corp.example/ns/{ns}/{sa}", ("{sa}.{ns}.svc.corp.internal", "*.{sa}.{ns}.svc.corp.internal"))
NAME = "web.prod.svc.corp.internal"


def _put(authority: Authority, name: str, ttl: int, rdata: list[str], rdtype: str = "A") -> int:
    body = json.dumps({"ttl": ttl, "rdata": rdata}).encode()
    response = registration_response(authority, "PUT", f"/v1/records/{name}/{rdtype}", "application/json", body, ID)
    return response.status


def test_registration_ttl_above_max_zone_ttl_is_refused_and_rollover_timing_stays_bounded(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(GRANT,))
    authority = Authority([zone])
    serial = zone.zone.serial
    assert _put(authority, NAME, 0x7FFFFFFF, ["10.1.2.3"]) == 400
    assert _put(authority, NAME, 86401, ["10.1.2.3"]) == 400
    assert zone.zone.serial == serial
    assert _put(authority, NAME, 86400, ["10.1.2.3"]) == 200
    assert zone.keys is not None
    started = zone.keys.clock()
    record = zone.keys.rollover("zsk", zone.timing_ttl())
    old = next(r for r in zone.keys.records() if r.role == "zsk" and r.tag != record.tag)
    assert old.remove is not None and old.remove - started < 2 * 86400


def test_update_ttl_above_max_zone_ttl_is_refused(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(Grant("tsig:web-key.", ("**.svc.corp.internal",)),), max_ttl=3600)
    authority = Authority([zone])
    update = dns.update.UpdateMessage(ORIGIN)
    update.add("db.svc.corp.internal.", 3601, "A", "10.9.9.9")
    rcode, reason = authority.apply(update, "tsig:web-key.")
    assert rcode == dns.rcode.REFUSED and "max_zone_ttl" in reason


def test_zone_file_ttl_above_max_zone_ttl_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match="max_zone_ttl"):
        signed_zone(tmp_path, ZONE_TEXT + "long 172800 A 192.0.2.1\n")


def test_explicit_max_zone_ttl_is_the_rollover_timing_ttl(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, max_ttl=7200, max_ttl_explicit=True)
    assert zone.timing_ttl() == 7200
    assert signed_zone(tmp_path / "b").timing_ttl() == 300  # the zone's largest TTL


def test_quota_bounds_records_and_bytes_per_identity(tmp_path: Path) -> None:
    zone = signed_zone(
        tmp_path, grants=(GRANT,), quota=Quota(records=5, rdata_bytes=600), state_path=tmp_path / "z.json"
    )
    authority = Authority([zone])
    assert _put(authority, NAME, 60, [f"10.0.0.{i}" for i in range(5)]) == 200
    assert _put(authority, f"a.{NAME}", 60, ["10.0.1.1"]) == 403  # a sixth record
    assert _put(authority, NAME, 60, ["10.0.0.1"]) == 200  # replacing frees room
    assert _put(authority, f"a.{NAME}", 60, ["10.0.1.1"]) == 200
    assert _put(authority, f"t.{NAME}", 60, ['"' + "x" * 250 + '"', '"' + "y" * 250 + '"'], "TXT") == 200
    assert _put(authority, f"u.{NAME}", 60, ['"' + "z" * 200 + '"'], "TXT") == 403  # bytes
    # Owners survive a restart.
    restarted = signed_zone(
        tmp_path, grants=(GRANT,), quota=Quota(records=5, rdata_bytes=600), state_path=tmp_path / "z.json"
    )
    assert _put(Authority([restarted]), f"u.{NAME}", 60, ['"' + "z" * 200 + '"'], "TXT") == 403
    assert dns.name.from_text(f"u.{NAME}.") not in restarted.zone.nodes
