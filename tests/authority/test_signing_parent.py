"""The parent side of a KSK roll, as Knot's KSK submission: DS polling of the parent's servers completes the
submission by itself once every one of them serves the new key's DS (not before, not for the old key's DS), and
DS push sends the new DS to the parent's primary by a TSIG-signed dynamic update. The parent is a knotd on
loopback accepting RFC 2136 updates."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
import pytest
from pydantic import ValidationError

from authority_lab import keyring, knot_conf_head, need, serving, signed_zone
from fixtures.unbound import free_port
from ztdns.authority.build import build_zone
from ztdns.authority.handler import Authority, ServedZone
from ztdns.authority.kasp import Policy
from ztdns.config.authority import AuthorityConfig, AuthZoneConfig

CHILD = dns.name.from_text("corp.internal.")
PARENT = dns.name.from_text("internal.")
XFR = dns.name.from_text("xfr.")
# The new KSK is ready (CDS published, submission starts) one second after the roll starts.
FAST = Policy(dnskey_ttl=1, propagation_delay=0, parent_propagation_delay=1, parent_ds_ttl=1, zsk_lifetime=0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _ds_rrset(zone: ServedZone, *tags: int) -> dns.rrset.RRset:
    assert zone.keys is not None
    rrset = dns.rrset.RRset(CHILD, dns.rdataclass.IN, dns.rdatatype.DS)
    for record in zone.keys.records():
        if record.tag in tags:
            rrset.add(zone.keys.zone_key(record).ds(), 60)
    return rrset


def test_submission_completes_when_every_parent_serves_the_new_ds(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, policy=FAST, parents=(("127.0.0.1", 1), ("127.0.0.1", 2)), parent_check_interval=60)
    clock = Clock()
    assert zone.keys is not None
    zone.keys.clock = zone.clock = clock
    authority = Authority([zone], clock=clock)
    old = zone.keys.keyset().dnskey_signers[0].tag
    assert not zone.parent_check_due()  # nothing in submission
    new = zone.keys.rollover("ksk", 300).tag
    clock.now += 2
    assert zone.parent_check_due() and not zone.parent_check_due()  # then not again within the interval
    assert not authority.parent_answers(zone, [_ds_rrset(zone, old), _ds_rrset(zone, old)])
    assert not authority.parent_answers(zone, [_ds_rrset(zone, old, new), None])  # one server did not answer
    assert not authority.parent_answers(zone, [_ds_rrset(zone, new), _ds_rrset(zone)])
    assert [k.tag for k in zone.keys.keyset().cds] == [new]
    serial = zone.zone.serial
    assert authority.parent_answers(zone, [_ds_rrset(zone, old, new), _ds_rrset(zone, new)])
    assert zone.keys.keyset().cds == () and zone.zone.serial != serial  # CDS withdrawn in a new version
    assert [r.ds_seen is not None for r in zone.keys.records() if r.tag == new] == [True]
    clock.now += 120
    assert not zone.parent_check_due()  # submission over


@contextmanager
def knot_parent(tmp_path: Path, port: int, ds: str) -> Iterator[None]:
    """knotd serving internal. (delegating corp.internal. with ``ds``), accepting updates signed with xfr."""
    need("knotd")
    (tmp_path / "knotdb").mkdir()
    (tmp_path / "internal.zone").write_text(
        textwrap.dedent(f"""
        $TTL 60
        @ SOA ns hostmaster 1 3600 600 86400 60
        @ NS ns
        ns A 127.0.0.1
        corp NS ns1.corp
        ns1.corp A 127.0.0.1
        {ds}
        """)
    )
    (tmp_path / "knot.conf").write_text(
        knot_conf_head(tmp_path, port)
        + textwrap.dedent(f"""
        acl:
          - id: update
            address: 127.0.0.1
            key: xfr
            action: update
        log:
          - target: {tmp_path}/knot.log
            any: info
        zone:
          - domain: internal.
            storage: {tmp_path}
            file: internal.zone
            acl: update
        """)
    )
    knot = subprocess.Popen(
        ["knotd", "-c", str(tmp_path / "knot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                dns.query.udp(dns.message.make_query(PARENT, "SOA"), "127.0.0.1", port=port, timeout=0.5)
                break
            except Exception:
                assert time.monotonic() < deadline, "knotd did not start"
                time.sleep(0.1)
        yield
    finally:
        knot.terminate()
        knot.wait()


def _wait(condition: Any, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def _ds_seen(zone: ServedZone, tag: int) -> bool:
    assert zone.keys is not None
    return any(r.tag == tag and r.ds_seen is not None for r in zone.keys.records())


@pytest.mark.slow
def test_ds_polling_against_a_knot_parent(tmp_path: Path) -> None:
    parent_port = free_port()
    zone = signed_zone(
        tmp_path / "state", policy=FAST, parents=(("127.0.0.1", parent_port),), parent_check_interval=0.3
    )
    assert zone.keys is not None
    old_ds = _ds_rrset(zone, zone.keys.keyset().dnskey_signers[0].tag)
    authority = Authority([zone], keyring=keyring())
    with knot_parent(tmp_path, parent_port, old_ds.to_text()), serving(authority, tick_seconds=0.1):
        new = zone.keys.rollover("ksk", 300).tag
        time.sleep(3)  # ready after 1 s: the parent has been asked several times and serves only the old DS
        assert not _ds_seen(zone, new)
        update = dns.update.UpdateMessage(PARENT, keyring=keyring(), keyname=XFR)
        update.replace(CHILD, 60, _ds_rrset(zone, new)[0])  # the registrar's step
        assert dns.query.tcp(update, "127.0.0.1", port=parent_port, timeout=5).rcode() == dns.rcode.NOERROR
        _wait(lambda: _ds_seen(zone, new), 10, "the new DS was never seen at the parent")
        assert zone.keys.keyset().cds == ()


@pytest.mark.slow
def test_ds_push_to_a_knot_parent_then_polling_completes_the_roll(tmp_path: Path) -> None:
    parent_port = free_port()
    zone = signed_zone(
        tmp_path / "state",
        policy=FAST,
        parents=(("127.0.0.1", parent_port),),
        parent_check_interval=0.3,
        ds_push=("127.0.0.1", parent_port),
        ds_push_key=XFR,
    )
    assert zone.keys is not None
    old = zone.keys.keyset().dnskey_signers[0].tag
    authority = Authority([zone], keyring=keyring())
    with knot_parent(tmp_path, parent_port, _ds_rrset(zone, old).to_text()), serving(authority, tick_seconds=0.1):
        new = zone.keys.rollover("ksk", 300).tag
        _wait(lambda: _ds_seen(zone, new), 15, "the pushed DS was never seen at the parent")
        response = dns.query.udp(dns.message.make_query(CHILD, "DS"), "127.0.0.1", port=parent_port, timeout=2)
        served = {rdata.key_tag for rrset in response.answer for rdata in rrset}
        assert served == {old, new}  # the old DS stays while the old KSK still signs the DNSKEY RRset
    assert "update" in (tmp_path / "knot.log").read_text().lower()


def test_parent_side_config(tmp_path: Path) -> None:
    signing = {"parent_servers": ["127.0.0.1:5353", "::1"], "parent_check_interval": 60, "ds_push": "127.0.0.1"}
    records = ["@ SOA ns hostmaster 1 3600 600 86400 60", "@ NS ns", "ns A 127.0.0.1"]
    zc = AuthZoneConfig(name="corp.internal", records=records, signing={**signing, "ds_push_key": "push"})
    settings = build_zone(zc, tmp_path, tmp_path / "state").settings
    assert settings.parents == (("127.0.0.1", 5353), ("::1", 53)) and settings.parent_check_interval == 60
    assert settings.ds_push == ("127.0.0.1", 53) and settings.ds_push_key == dns.name.from_text("push")
    with pytest.raises(ValidationError, match="unknown TSIG key 'push'"):
        AuthorityConfig(zones=[zc])
