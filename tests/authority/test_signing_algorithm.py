"""Algorithm rollover (RFC 6781 §4.1.4, double signature) ECDSA P-256 → Ed25519: the timeline with an injected
clock (every algorithm in the DNSKEY RRset signs every RRset at every instant, RFC 4035 §2.2), a change refused
without ``algorithm_rollover`` (also by ``ztdns check``), and Unbound validating throughout with no SERVFAIL."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from authority.test_signing_rollover import FAST, _wait, parent_and_child, set_parent_ds, unbound_validating
from authority_lab import need, serving
from ztdns.authority.build import check_zone
from ztdns.authority.kasp import KeyManager, Policy
from ztdns.authority.keys import ECDSAP256SHA256, ED25519, KeyStoreError
from ztdns.authority.zone import ZoneError
from ztdns.config.authority import AuthZoneConfig

ZONE = dns.name.from_text("corp.internal.")
POLICY = Policy(dnskey_ttl=3600, propagation_delay=300, parent_propagation_delay=3600, parent_ds_ttl=86400)


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _rfc4035_ok(km: KeyManager) -> None:
    keyset = km.keyset()
    published = {k.private.algorithm for k in keyset.dnskeys}
    assert published <= {k.private.algorithm for k in keyset.zone_signers}
    assert published <= {k.private.algorithm for k in keyset.dnskey_signers}


def test_algorithm_change_needs_a_rollover_and_follows_rfc6781(tmp_path: Path) -> None:
    clock = Clock()
    KeyManager(ZONE, POLICY, tmp_path, clock=clock).ensure_keys()
    ed = dataclasses.replace(POLICY, algorithm=ED25519)
    with pytest.raises(KeyStoreError, match="algorithm_rollover"):
        KeyManager(ZONE, ed, tmp_path, clock=clock).ensure_keys()
    records = ["@ SOA ns1 h 1 3600 600 86400 60", "@ NS ns1"]
    zc = AuthZoneConfig.model_validate(
        {"name": "corp.internal.", "records": records, "signing": {"algorithm": "ed25519"}}
    )
    with pytest.raises(ZoneError, match="algorithm_rollover"):
        check_zone(zc, tmp_path, tmp_path)
    rolling = {"algorithm": "ed25519", "algorithm_rollover": True}
    check_zone(
        AuthZoneConfig.model_validate({"name": "corp.internal.", "records": records, "signing": rolling}),
        tmp_path,
        tmp_path,
    )

    km = KeyManager(ZONE, dataclasses.replace(ed, algorithm_rollover=True), tmp_path, clock=clock)
    km.ensure_keys()
    started = km.due(max_ttl=600)
    assert {r.algorithm for r in started} == {ED25519} and {r.role for r in started} == {"ksk", "zsk"}
    # New signatures first, DNSKEY RRset unchanged.
    assert {k.private.algorithm for k in km.keyset().zone_signers} == {ECDSAP256SHA256, ED25519}
    assert {k.private.algorithm for k in km.keyset().dnskeys} == {ECDSAP256SHA256}
    _rfc4035_ok(km)
    clock.now += 300 + 600  # Dprp + max TTL: the new keys join
    assert {k.private.algorithm for k in km.keyset().dnskeys} == {ECDSAP256SHA256, ED25519}
    assert km.keyset().cds == ()
    _rfc4035_ok(km)
    clock.now += 300 + 3600  # Ipub: the new KSK's CDS
    assert [k.private.algorithm for k in km.keyset().cds] == [ED25519]
    km.ds_seen(600)
    clock.now += 3600 + 86400  # the old DS is gone from caches: the old keys leave the DNSKEY RRset
    assert {k.private.algorithm for k in km.keyset().dnskeys} == {ED25519}
    assert {k.private.algorithm for k in km.keyset().zone_signers} == {ECDSAP256SHA256, ED25519}
    _rfc4035_ok(km)
    clock.now += 300 + 3600  # the old DNSKEY RRset has left every cache: old signatures go
    assert {k.private.algorithm for k in km.keyset().zone_signers} == {ED25519}
    assert {k.private.algorithm for k in km.keyset().dnskey_signers} == {ED25519}
    # Later key rollovers keep the new algorithm.
    clock.now += 1
    assert km.rollover("zsk", 600).algorithm == ED25519


@pytest.mark.slow
def test_ecdsa_to_ed25519_with_unbound_validating_throughout(tmp_path: Path) -> None:
    need("unbound")
    parent, child, authority = parent_and_child(tmp_path)
    keys = child.keys
    assert keys is not None
    with serving(authority, tick_seconds=0.1) as (loop, server):
        set_parent_ds(server.port, [keys.keyset().dnskey_signers[0].ds().to_text()])
        with unbound_validating(tmp_path, parent, server.port):
            time.sleep(1.5)
            rolled = dataclasses.replace(FAST, algorithm=ED25519, algorithm_rollover=True)

            def configure() -> None:
                keys.policy = rolled

            loop.call(configure)  # as a reload with the new algorithm would
            _wait(lambda: len(keys.keyset().cds) == 1, 15)
            (new_ksk,) = keys.keyset().cds
            assert new_ksk.private.algorithm == ED25519
            time.sleep(1.0)
            set_parent_ds(server.port, [new_ksk.ds().to_text()])
            loop.call(lambda: keys.ds_seen(child.timing_ttl()))
            _wait(lambda: {k.private.algorithm for k in keys.keyset().zone_signers} == {ED25519}, 15)
            assert {k.private.algorithm for k in keys.keyset().dnskeys} == {ED25519}
            time.sleep(2.0)
