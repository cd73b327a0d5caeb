"""Offline KSK (Knot's offline-ksk): the server holds ZSKs only, writes a KSR of its ZSK plan, and serves the DNSKEY
RRset and signatures of an imported SKR per time slot; a tampered SKR, or one for other ZSKs, is refused and the
one imported before keeps serving; the CLI on both sides; the zone validates (ldns-verify-zone, delv); Knot's
keymgr signs our KSR and imports our SKR."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.rrset
import pytest

from authority_lab import ORIGIN, ZONE_TEXT, keyring, need, serving, signed_zone
from ztdns.authority.handler import Authority, ServedZone, ZoneSettings
from ztdns.authority.kasp import FileStore, KeyManager, Policy
from ztdns.authority.offline import KSR, SKR, OfflineKskError, load_ksks, parse, render, sign
from ztdns.authority.signing import Validity
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.zone import Zone
from ztdns.cli import main
from ztdns.config import ConfigError, load_config

DAY = 86400
START = 1_800_000_000
POLICY = Policy(offline_ksk=True, zsk_lifetime=30 * DAY, dnskey_ttl=3600, propagation_delay=300)


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


def _zone(state: Path, clock: Clock, **settings: Any) -> ServedZone:
    keys = KeyManager(ORIGIN, POLICY, state, clock=clock)
    return ServedZone(ZoneSettings(ORIGIN, **settings), Zone.from_text(ZONE_TEXT, ORIGIN), keys, clock)


def _offline_sign(ksr: str, ksk_dir: Path) -> str:
    if not list(ksk_dir.glob("*.pem")):
        FileStore(ksk_dir).create(ORIGIN, POLICY.algorithm, sep=True)
    slots = sign(parse(ksr, KSR, ORIGIN, "ksr"), load_ksks(ksk_dir, ORIGIN), Validity(14 * DAY, 0, 5 * DAY), cds=True)
    return render(SKR, slots)


def _ceremony(zone: ServedZone, tmp_path: Path, end: int = 60 * DAY) -> str:
    assert zone.keys is not None
    now = int(zone.keys.clock())
    ksr = zone.keys.generate_ksr(now, now + end, zone.timing_ttl())
    skr = _offline_sign(ksr, tmp_path / "ksk")
    (tmp_path / "skr").write_text(skr)
    zone.keys.import_skr(skr, str(tmp_path / "skr"))
    zone.refresh_keys()
    return skr


def _validates(zone: ServedZone, t: float) -> None:
    """The DNSKEY RRset is signed by a KSK the server has no private key of, and the apex SOA by a ZSK in it."""
    assert zone.view is not None
    dnskeys = dns.rrset.from_rdata_list(ORIGIN, 3600, list(zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) or ()))
    sigs = zone.view.signatures.rrsig(dnskeys)
    assert sigs is not None and all(sig.key_tag not in {r.tag for r in zone.keys.records()} for sig in sigs)  # type: ignore[union-attr]
    dns.dnssec.validate(dnskeys, sigs, {ORIGIN: dnskeys}, now=t)
    soa = zone.zone.soa_rrset()
    soa_sigs = zone.view.signatures.rrsig(soa)
    assert soa_sigs is not None
    dns.dnssec.validate(soa, soa_sigs, {ORIGIN: dnskeys}, now=t)


def test_offline_ksk_zone_serves_the_imported_dnskey_set_without_a_ksk(tmp_path: Path) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock)
    assert zone.keys is not None
    assert [r.role for r in zone.keys.records()] == ["zsk"]
    assert zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) is None  # nothing to serve before the first import
    skr = _ceremony(zone, tmp_path)
    # The ZSK rolls up to the KSR's end are planned: 30-day lifetime over 60 days.
    assert [r.role for r in zone.keys.records()] == ["zsk", "zsk", "zsk"]
    assert "SignedKeyResponse 1.0" in skr
    _validates(zone, clock.now)
    cds = zone.zone.get(ORIGIN, dns.rdatatype.CDS)
    assert cds is not None and cds[0].key_tag == load_ksks(tmp_path / "ksk", ORIGIN)[0].tag
    # The imported RRSIGs cover the apex RRsets only: the same type below the apex is signed by the ZSK.
    assert zone.view is not None
    below = dns.rrset.from_rdata_list(dns.name.from_text("x.corp.internal."), 300, list(cds))
    signed = zone.view.signatures.rrsig(below)
    assert signed is not None
    assert [sig.key_tag for sig in signed] == [zone.keys.keyset().zone_signers[0].tag]
    # No KSK private key on the server: the key directory holds the three ZSKs' files only.
    assert sorted(p.name for p in (tmp_path / "state" / "keys").iterdir()) == sorted(
        r.locator for r in zone.keys.records()
    )


def test_slots_switch_when_the_zsk_plan_says(tmp_path: Path) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock)
    _ceremony(zone, tmp_path)
    assert zone.keys is not None
    old, new = zone.keys.records()[:2]
    assert new.publish == START + 30 * DAY and new.active == new.publish + 300 + 3600
    clock.now = new.publish - 1
    zone.refresh_keys()
    tags = {dns.dnssec.key_id(rd) for rd in zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) or ()}
    assert new.tag not in tags and old.tag in tags
    serial = zone.zone.serial
    clock.now = new.publish
    assert zone.refresh_keys()  # the next slot: a new version for secondaries
    assert zone.zone.serial != serial
    tags = {dns.dnssec.key_id(rd) for rd in zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) or ()}
    assert {old.tag, new.tag} <= tags
    _validates(zone, clock.now)
    clock.now = new.active  # the new ZSK signs, the RRSIGs still verify against the slot's DNSKEY RRset
    zone.refresh_keys()
    zone.resign()
    _validates(zone, clock.now)
    assert old.remove is not None
    clock.now = old.remove
    assert zone.refresh_keys()
    tags = {dns.dnssec.key_id(rd) for rd in zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) or ()}
    assert old.tag not in tags and new.tag in tags
    _validates(zone, clock.now)


def _tamper(skr: str) -> str:
    lines = skr.splitlines()
    index = next(i for i, line in enumerate(lines) if " RRSIG DNSKEY " in line)
    line = lines[index]
    lines[index] = line[:-8] + ("A" if line[-8] != "A" else "B") + line[-7:]
    return "\n".join(lines) + "\n"


def test_a_tampered_skr_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock)
    skr = _ceremony(zone, tmp_path)
    assert zone.keys is not None and zone.keys.skr is not None
    stored = zone.keys.skr.path.read_text()
    dnskeys = zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
    with pytest.raises(OfflineKskError, match=r"bad\.skr: slot .*RRSIG DNSKEY by key \d+ does not verify"):
        zone.keys.import_skr(_tamper(skr), "bad.skr")
    assert zone.keys.skr.path.read_text() == stored
    assert not zone.refresh_keys() and zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) == dnskeys
    _validates(zone, clock.now)


def test_an_skr_for_other_zsks_is_refused(tmp_path: Path) -> None:
    zone = _zone(tmp_path / "state", Clock())
    other = _zone(tmp_path / "other", Clock())
    assert zone.keys is not None and other.keys is not None
    ksr = other.keys.generate_ksr(START, START + 10 * DAY, 300)
    with pytest.raises(OfflineKskError, match=r"foreign\.skr: at .* the SKR publishes ZSKs \[\d+\] but the key state"):
        zone.keys.import_skr(_offline_sign(ksr, tmp_path / "ksk"), "foreign.skr")
    assert zone.keys.skr is not None and not zone.keys.skr.path.exists()


def test_a_later_skr_keeps_the_slots_before_it(tmp_path: Path) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock)
    _ceremony(zone, tmp_path)
    assert zone.keys is not None and zone.keys.skr is not None
    first = zone.keys.skr.slots()
    ksr = zone.keys.generate_ksr(START + 50 * DAY, START + 120 * DAY, zone.timing_ttl())
    slots = zone.keys.import_skr(_offline_sign(ksr, tmp_path / "ksk"), "next.skr")
    assert [s.start for s in slots if s.start < START + 50 * DAY] == [
        s.start for s in first if s.start < START + 50 * DAY
    ]
    assert slots[-1].start >= START + 120 * DAY
    clock.now = START + 100 * DAY
    zone.refresh_keys()
    _validates(zone, clock.now)


def test_a_running_server_serves_an_import_at_its_next_tick(tmp_path: Path) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock)
    authority = Authority([zone], clock=clock)
    assert authority.tick() == [] and zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY) is None
    assert zone.keys is not None
    ksr = zone.keys.generate_ksr(START, START + 10 * DAY, zone.timing_ttl())
    # Another process (the CLI) imports: the server only sees the file change.
    cli = KeyManager(ORIGIN, POLICY, tmp_path / "state", clock=clock)
    cli.import_skr(_offline_sign(ksr, tmp_path / "ksk"), "corp.skr")
    serial = zone.zone.serial
    assert authority.tick() == [zone] and zone.zone.serial != serial
    _validates(zone, clock.now)


def test_running_out_warns_and_the_metric_counts_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    zone = _zone(tmp_path / "state", clock, skr_warning=14 * DAY)
    authority = Authority([zone], clock=clock)
    assert zone.skr_remaining() == 0.0
    _ceremony(zone, tmp_path, end=30 * DAY)
    assert zone.keys is not None and zone.keys.skr is not None
    end = zone.keys.skr.slots()[-1].expiration()
    assert end is not None and zone.skr_remaining() == end - clock.now

    def gauge() -> float:
        metric = next(m for m in authority.collect() if m.name == "ztdns_authority_skr_remaining_seconds")
        return float(metric.samples[0].value)

    assert gauge() == end - clock.now
    with caplog.at_level(logging.WARNING, logger="ztdns.authority.handler"):
        authority.tick()
        assert "runs out" not in caplog.text
        clock.now = end - 13 * DAY
        authority.tick()
        assert "corp.internal.: offline KSK: the imported SKR runs out in 13.0 days" in caplog.text
    assert gauge() == 13 * DAY


def test_rollovers_and_online_ksk_settings_are_refused(tmp_path: Path) -> None:
    zone = _zone(tmp_path / "state", Clock())
    assert zone.keys is not None
    with pytest.raises(Exception, match="offline KSK: ZSK rolls follow the plan"):
        zone.keys.rollover("zsk", 300)
    config = tmp_path / "ztdns.toml"
    config.write_text(CONFIG.format(state=tmp_path / "s") + "csk = true\n")
    with pytest.raises(ConfigError, match="offline_ksk: csk needs the KSK on the server"):
        load_config(config)


CONFIG = """
[server]
state_dir = "{state}"
[[authority.zones]]
name = "corp.internal"
records = ["@ SOA ns1 hostmaster 1 3600 600 86400 60", "@ NS ns1", "ns1 A 127.0.0.1", "www A 192.0.2.1"]
transfer_networks = ["127.0.0.0/8"]
[authority.zones.signing]
offline_ksk = true
"""


def test_the_ceremony_by_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ztdns.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    zone_args = ["corp.internal", "--config", str(config)]
    ksk = ["corp.internal", "--dir", str(tmp_path / "ksk")]
    ksr, skr = tmp_path / "corp.ksr", tmp_path / "corp.skr"
    assert main(["keys", "generate-ksr", *zone_args, "--from", "+0", "--to", "+100d", "--output", str(ksr)]) == 0
    assert main(["offline-ksk", "generate", *ksk]) == 0
    assert " IN DS " in capsys.readouterr().out
    assert main(["offline-ksk", "sign-ksr", *ksk[:1], str(ksr), *ksk[1:], "--output", str(skr)]) == 0
    assert main(["keys", "import-skr", "corp.internal", str(skr), "--config", str(config)]) == 0
    assert "SKR imported" in capsys.readouterr().out
    assert main(["offline-ksk", "ds", *ksk]) == 0
    offline_ds = capsys.readouterr().out
    assert main(["keys", "ds", *zone_args]) == 0
    assert capsys.readouterr().out == offline_ds  # the server names the offline KSK's DS from the SKR
    assert main(["keys", "list", *zone_args]) == 0
    assert "offline KSK: SKR with" in capsys.readouterr().out
    (tmp_path / "bad.skr").write_text(_tamper(skr.read_text()))
    assert main(["keys", "import-skr", "corp.internal", str(tmp_path / "bad.skr"), "--config", str(config)]) == 1
    assert "bad.skr: slot" in capsys.readouterr().err
    assert main(["keys", "rollover", *zone_args]) == 1
    assert "offline KSK" in capsys.readouterr().err
    assert main(["offline-ksk", "sign-ksr", *ksk, "--output", str(skr)]) == 1


@pytest.mark.slow
def test_offline_ksk_zone_validates_with_ldns_and_delv(tmp_path: Path) -> None:
    need("ldns-verify-zone", "delv")
    zone = signed_zone(
        tmp_path / "state", policy=POLICY, transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")}))
    )
    _ceremony(zone, tmp_path)
    ds: Any = load_ksks(tmp_path / "ksk", ORIGIN)[0].ds()
    anchors = tmp_path / "anchors.conf"
    static = f'static-ds {ds.key_tag} {ds.algorithm} {ds.digest_type} "{ds.digest.hex()}"'
    anchors.write_text(f'trust-anchors {{ "corp.internal." {static}; }};')
    with serving(Authority([zone], keyring=keyring())) as (_, server):
        lines = []
        for message in dns.query.xfr(
            "127.0.0.1", ORIGIN, port=server.port, keyring=keyring(), keyname="xfr.", relativize=False
        ):
            lines += [rrset.to_text() for rrset in message.answer]
        (tmp_path / "axfr.zone").write_text("\n".join(lines[:-1]) + "\n")
        verify = ["ldns-verify-zone", "-V", "2", str(tmp_path / "axfr.zone")]
        check = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        for name, rdtype in (("www.corp.internal", "A"), ("corp.internal", "DNSKEY"), ("nope.corp.internal", "A")):
            result = subprocess.run(
                ["delv", "@127.0.0.1", "-p", str(server.port), "-a", str(anchors), "+root=corp.internal", name, rdtype],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert "fully validated" in result.stdout, (name, rdtype, result.stdout + result.stderr)


KNOT_CONF = """
server:
    rundir: {dir}
database:
    storage: {dir}
policy:
  - id: offline
    algorithm: ecdsap256sha256
    offline-ksk: on
    manual: on
    zone-max-ttl: 300
    dnskey-ttl: 3600
    propagation-delay: 300
    zsk-lifetime: 30d
    rrsig-lifetime: 14d
    rrsig-refresh: 5d
    cds-cdnskey-publish: always
template:
  - id: default
    storage: {dir}
    dnssec-signing: on
    dnssec-policy: offline
zone:
  - domain: corp.internal.
"""


def _keymgr(conf: Path, *args: str) -> str:
    result = subprocess.run(
        ["keymgr", "-c", str(conf), "corp.internal.", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_knot_keymgr_signs_our_ksr_and_imports_our_skr(tmp_path: Path) -> None:
    need("keymgr")
    # Knot's offline signer: its KSK signs the KSR ztdns wrote; ztdns imports Knot's SKR.
    knot_ksk = tmp_path / "knot-ksk"
    knot_ksk.mkdir()
    ksk_conf = knot_ksk / "knot.conf"
    ksk_conf.write_text(KNOT_CONF.format(dir=knot_ksk))
    _keymgr(ksk_conf, "generate", "ksk=yes", "zsk=no", "algorithm=13")
    clock = Clock()
    clock.now = time.time()  # keymgr signs from its own clock
    zone = _zone(tmp_path / "state", clock)
    assert zone.keys is not None
    ksr = tmp_path / "ztdns.ksr"
    ksr.write_text(zone.keys.generate_ksr(int(clock.now), int(clock.now) + 60 * DAY, 300))
    knot_skr = _keymgr(ksk_conf, "sign-ksr", str(ksr))
    zone.keys.import_skr(knot_skr, "knot.skr")
    zone.refresh_keys()
    _validates(zone, clock.now)
    # Knot's online side: its KSR is signed by ztdns offline-ksk, and keymgr import-skr accepts the SKR.
    knot_zsk = tmp_path / "knot-zsk"
    knot_zsk.mkdir()
    zsk_conf = knot_zsk / "knot.conf"
    zsk_conf.write_text(KNOT_CONF.format(dir=knot_zsk))
    _keymgr(zsk_conf, "pregenerate", "+60d")
    (tmp_path / "knot.ksr").write_text(_keymgr(zsk_conf, "generate-ksr", "+0", "+60d"))
    ours = tmp_path / "ztdns.skr"
    ours.write_text(_offline_sign((tmp_path / "knot.ksr").read_text(), tmp_path / "ksk"))
    _keymgr(zsk_conf, "import-skr", str(ours))
    shown = _keymgr(zsk_conf, "show-offline", "+0", "+60d")
    tag = load_ksks(tmp_path / "ksk", ORIGIN)[0].tag
    assert f"id = {tag}" in shown and f"{tag} corp.internal." in shown and "RRSIG DNSKEY" in shown, shown
