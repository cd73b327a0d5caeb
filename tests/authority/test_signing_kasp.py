"""KASP timelines with an injected clock: RFC 7583 intervals, persistence across restarts, key file safety."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import dns.name
import dns.rdatatype
import pytest

from authority_lab import signed_zone
from ztdns.authority.kasp import KeyManager, Policy
from ztdns.authority.keys import KeyStoreError
from ztdns.authority.zone import rrset_of

ZONE = dns.name.from_text("corp.internal.")
POLICY = Policy(dnskey_ttl=3600, propagation_delay=300, parent_propagation_delay=3600, parent_ds_ttl=86400)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def manager(path: Path, clock: Clock) -> KeyManager:
    km = KeyManager(ZONE, POLICY, path, clock=clock)
    km.ensure_keys()
    return km


def test_zsk_prepublish_timeline_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    km = manager(tmp_path, clock)
    old = km.keyset().zone_signers[0].tag
    new = km.rollover("zsk", max_ttl=600)
    assert new.active == clock.now + 300 + 3600  # Ipub = Dprp + TTL(DNSKEY)
    assert [k.tag for k in km.keyset().zone_signers] == [old]
    assert {k.tag for k in km.keyset().dnskeys} >= {old, new.tag}
    with pytest.raises(KeyStoreError, match="already in progress"):
        km.rollover("zsk", max_ttl=600)

    clock.now += 3900
    restarted = KeyManager(ZONE, POLICY, tmp_path, clock=clock)  # a new process reads the same state
    assert [k.tag for k in restarted.keyset().zone_signers] == [new.tag]
    assert old in {k.tag for k in restarted.keyset().dnskeys}  # still published: Iret not over
    clock.now += 300 + 600  # Iret = Dprp + max TTL
    assert old not in {k.tag for k in restarted.keyset().dnskeys}


def test_ksk_double_signature_with_cds_window(tmp_path: Path) -> None:
    clock = Clock()
    km = manager(tmp_path, clock)
    old = km.keyset().dnskey_signers[0].tag
    assert km.keyset().cds == ()
    new = km.rollover("ksk", max_ttl=600)
    assert {k.tag for k in km.keyset().dnskey_signers} == {old, new.tag}  # both sign the DNSKEY RRset
    assert km.keyset().cds == ()
    with pytest.raises(KeyStoreError, match="not ready"):
        km.ds_seen(max_ttl=600)
    clock.now += 3900
    assert [k.tag for k in km.keyset().cds] == [new.tag]
    km.ds_seen(max_ttl=600)
    assert km.keyset().cds == ()
    assert {k.tag for k in km.keyset().dnskey_signers} == {old, new.tag}
    clock.now += 3600 + 86400  # DprpP + TTL(DS)
    assert [k.tag for k in km.keyset().dnskey_signers] == [new.tag]


def test_lifetime_starts_rollovers(tmp_path: Path) -> None:
    clock = Clock()
    km = KeyManager(ZONE, Policy(zsk_lifetime=1000), tmp_path, clock=clock)
    km.ensure_keys()
    assert km.due(max_ttl=60) == []
    clock.now += 1000
    assert [r.role for r in km.due(max_ttl=60)] == ["zsk"]
    assert km.due(max_ttl=60) == []


def test_missing_key_file_is_an_error_and_key_files_are_private(tmp_path: Path) -> None:
    clock = Clock()
    manager(tmp_path, clock)
    files = list((tmp_path / "keys").iterdir())
    assert len(files) == 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    files[0].unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        KeyManager(ZONE, POLICY, tmp_path, clock=clock).keyset()
    assert len(list((tmp_path / "keys").iterdir())) == 1  # nothing was regenerated


def _purging(tmp_path: Path, clock: Clock) -> KeyManager:
    km = KeyManager(ZONE, dataclasses.replace(POLICY, purge_delay=1000), tmp_path, clock=clock)
    km.ensure_keys()
    return km


def test_retired_keys_are_purged_after_the_delay(tmp_path: Path) -> None:
    clock = Clock()
    km = _purging(tmp_path, clock)
    old = next(r for r in km.records() if r.role == "zsk")
    km.rollover("zsk", max_ttl=600)
    assert old.locator in {p.name for p in (tmp_path / "keys").iterdir()}
    record = next(r for r in km.records() if r.tag == old.tag)
    assert record.remove is not None
    clock.now = record.remove + 999
    km.due(600)
    assert any(r.tag == old.tag for r in km.records())  # not yet: the delay has not passed
    clock.now += 2
    km.due(600)
    assert all(r.tag != old.tag for r in km.records())
    assert old.locator not in {p.name for p in (tmp_path / "keys").iterdir()}
    assert len(km.keyset().dnskeys) == 2  # the zone's keys are untouched


@pytest.mark.parametrize(
    ("mode", "before", "submission", "after"),
    [
        ("rollover", [], ["new"], []),
        ("none", [], [], []),
        ("always", ["old"], ["new"], ["new"]),
        ("double-ds", ["old"], ["new", "old"], ["new"]),
        ("delete-dnssec", [], [], []),
    ],
)
def test_cds_publish_modes(
    tmp_path: Path, mode: str, before: list[str], submission: list[str], after: list[str]
) -> None:
    """Knot's cds-cdnskey-publish: which KSKs get CDS/CDNSKEY before, during (submission) and after a roll."""
    clock = Clock()
    km = KeyManager(ZONE, dataclasses.replace(POLICY, cds_publish=mode), tmp_path, clock=clock)  # type: ignore[arg-type]
    km.ensure_keys()
    tags = {"old": km.keyset().dnskey_signers[0].tag}

    def published() -> list[str]:
        return sorted(name for name, tag in tags.items() if tag in {k.tag for k in km.keyset().cds})

    assert published() == before
    tags["new"] = km.rollover("ksk", max_ttl=600).tag
    clock.now += 3900
    assert published() == submission
    km.ds_seen(max_ttl=600)
    assert published() == after
    assert km.keyset().cds_delete == (mode == "delete-dnssec")


def test_delete_dnssec_publishes_the_rfc_8078_delete_records(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, policy=dataclasses.replace(POLICY, cds_publish="delete-dnssec"))
    apex = zone.zone.nodes[zone.origin]
    assert [r.to_text() for r in apex[dns.rdatatype.CDS]] == ["0 0 0 00"]
    assert [r.to_text() for r in apex[dns.rdatatype.CDNSKEY]] == ["0 3 0 AA=="]
    assert zone.view is not None and zone.keys is not None
    ksk = zone.keys.keyset().dnskey_signers[0].tag
    for rdtype in (dns.rdatatype.CDS, dns.rdatatype.CDNSKEY):
        rrsig = zone.view.signatures.rrsig(rrset_of(zone.origin, apex[rdtype]))
        assert rrsig is not None and [r.key_tag for r in rrsig] == [ksk]  # signed by the KSK (RFC 8078 §4)
