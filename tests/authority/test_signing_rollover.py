"""A complete ZSK and KSK rollover with tiny TTLs and delays while Unbound validates continuously through the
parent
zone (also ours): zero bogus answers, and the child's CDS appears when the new KSK is ready and goes once the
parent serves its DS. The parent's DS is swapped by a real TSIG-signed dynamic UPDATE, as a registrar
automation would."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from authority_lab import keyring, need, serving, signed_zone, unbound
from ztdns.authority.handler import Authority, ServedZone
from ztdns.authority.kasp import Policy
from ztdns.authority.update import Grant

pytestmark = pytest.mark.slow
FAST = Policy(dnskey_ttl=1, propagation_delay=1, parent_propagation_delay=1, parent_ds_ttl=1, zsk_lifetime=0)
CHILD = dns.name.from_text("corp.internal.")
PARENT = dns.name.from_text("internal.")
CHILD_TEXT = """
$TTL 1
@    IN SOA ns1 hostmaster 1 3600 600 86400 1
@    NS  ns1
ns1  A   127.0.0.1
www  A   192.0.2.10
*.wild A 192.0.2.20
"""
PARENT_TEXT = """
$TTL 1
@        IN SOA ns1 hostmaster 1 3600 600 86400 1
@        NS  ns1
ns1      A   127.0.0.1
corp     NS  ns1.corp
ns1.corp A   127.0.0.1
"""
QUESTIONS = [
    ("www.corp.internal.", "A"),
    ("nope.corp.internal.", "A"),
    ("x.wild.corp.internal.", "A"),
    ("www.corp.internal.", "MX"),
]


class Prober(threading.Thread):
    """Asks Unbound the questions in a loop; counts answers that are not validated (bogus → SERVFAIL)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.asked = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for name, rdtype in QUESTIONS:
                query = dns.message.make_query(name, rdtype, want_dnssec=True)
                try:
                    response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=3)
                except Exception as exc:
                    self.failures.append(f"{name} {rdtype}: {exc!r}")
                    continue
                self.asked += 1
                if response.rcode() == dns.rcode.SERVFAIL or not response.flags & dns.flags.AD:
                    self.failures.append(f"{time.time():.1f} {name} {rdtype}: {dns.rcode.to_text(response.rcode())}")
            time.sleep(0.05)


REGISTRAR = dns.name.from_text("xfr.")


def parent_and_child(tmp_path: Path) -> tuple[ServedZone, ServedZone, Authority]:
    """The signed parent (which takes the child's DS by UPDATE from the registrar's key) and the signed child."""
    grant = Grant("tsig:xfr.", ("corp.internal",), frozenset({dns.rdatatype.DS}))
    parent = signed_zone(tmp_path / "parent", PARENT_TEXT, PARENT, FAST, grants=(grant,))
    child = signed_zone(tmp_path / "child", CHILD_TEXT, CHILD, FAST)
    assert child.keys is not None and parent.keys is not None
    return parent, child, Authority([parent, child], keyring=keyring())


def set_parent_ds(port: int, ds_texts: list[str]) -> None:
    """Replace the child's DS in the parent, as a registrar's automation would: a TSIG-signed UPDATE."""
    update = dns.update.UpdateMessage(PARENT, keyring=keyring(), keyname=REGISTRAR)
    update.replace("corp", 1, "DS", *ds_texts)
    assert dns.query.tcp(update, "127.0.0.1", port=port, timeout=5).rcode() == dns.rcode.NOERROR


@contextlib.contextmanager
def unbound_validating(tmp_path: Path, parent: ServedZone, port: int) -> Iterator[Prober]:
    """Unbound, anchored at the parent's KSK, asking the child's names all along; none of its answers may be
    bogus (or unvalidated) by the end."""
    assert parent.keys is not None
    anchor = parent.keys.keyset().dnskey_signers[0].ds()
    process, listen = unbound(tmp_path, port, f"internal. DS {anchor.to_text()}", stub="internal.")
    prober = Prober(listen)
    prober.start()
    try:
        yield prober
    finally:
        prober.stop.set()
        prober.join(10)
        process.kill()
        process.wait()
    assert prober.asked > 50
    assert prober.failures == []


def test_zsk_and_ksk_rollover_without_a_bogus_answer(tmp_path: Path) -> None:
    need("unbound")
    parent, child, authority = parent_and_child(tmp_path)
    keys = child.keys
    assert keys is not None

    with serving(authority, tick_seconds=0.1) as (loop, server):

        def cds() -> list[str]:
            response = dns.query.udp(dns.message.make_query(CHILD, "CDS"), "127.0.0.1", port=server.port, timeout=3)
            return [rd.to_text() for rrset in response.answer for rd in rrset]

        ksk = keys.keyset().dnskey_signers[0]
        set_parent_ds(server.port, [ksk.ds().to_text()])
        with unbound_validating(tmp_path, parent, server.port):
            time.sleep(1.5)
            old_zsk = keys.keyset().zone_signers[0].tag
            loop.call(lambda: keys.rollover("zsk", child.base.max_ttl()))
            _wait(lambda: keys.keyset().zone_signers[0].tag != old_zsk, 10)
            _wait(lambda: len(keys.keyset().dnskeys) == 2, 10)
            time.sleep(1.5)

            assert cds() == []
            new = loop.call(lambda: keys.rollover("ksk", child.base.max_ttl()))
            _wait(lambda: len(cds()) == 1, 10)
            published = cds()
            new_ds = next(k for k in keys.keyset().cds if k.tag == new.tag).ds().to_text()
            assert published == [new_ds]
            time.sleep(1.0)
            set_parent_ds(server.port, [new_ds])
            loop.call(lambda: keys.ds_seen(child.base.max_ttl()))
            _wait(lambda: cds() == [], 5)
            _wait(lambda: [k.tag for k in keys.keyset().dnskey_signers] == [new.tag], 10)
            time.sleep(2.0)


def _wait(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")
