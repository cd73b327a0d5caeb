"""The signed zone, transferred over AXFR, passes BIND's, ldns's and Knot's zone checkers; Unbound and delv,
with
our DS as trust anchor, validate positive, NXDOMAIN, NODATA and wildcard answers as secure."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from authority_lab import ORIGIN, keyring, need, serving, signed_zone, unbound
from ztdns.authority.handler import Authority, ServedZone
from ztdns.authority.kasp import Policy
from ztdns.authority.keys import ALGORITHMS
from ztdns.authority.transfer import TransferAcl


def _axfr_text(port: int) -> str:
    query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
    query.use_tsig(keyring(), dns.name.from_text("xfr."))
    lines = []
    for message in dns.query.xfr("127.0.0.1", ORIGIN, port=port, keyring=keyring(), keyname="xfr.", relativize=False):
        for rrset in message.answer:
            lines.append(rrset.to_text())
    return "\n".join(lines[:-1]) + "\n"  # the closing SOA repeats the first


@pytest.fixture(params=["ecdsap256sha256", "ed25519"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServedZone, int]]:
    zone = signed_zone(
        tmp_path,
        policy=Policy(algorithm=ALGORITHMS[request.param]),
        transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})),
    )
    with serving(Authority([zone], keyring=keyring())) as (_, server):
        yield zone, server.port


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool",
    [
        ["dnssec-verify", "-o", "corp.internal."],
        ["ldns-verify-zone", "-V", "2"],
        ["kzonecheck", "-o", "corp.internal.", "-d", "on"],
    ],
    ids=["dnssec-verify", "ldns-verify-zone", "kzonecheck"],
)
def test_transferred_signed_zone_verifies(served: tuple[ServedZone, int], tool: list[str], tmp_path: Path) -> None:
    need(tool[0])
    _, port = served
    path = tmp_path / "axfr.zone"
    path.write_text(_axfr_text(port))
    result = subprocess.run([*tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_transfer_refused_without_key(served: tuple[ServedZone, int]) -> None:
    _, port = served
    query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
    response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    assert response.rcode() == dns.rcode.REFUSED


def _ds(zone: ServedZone) -> str:
    assert zone.keys is not None
    ksk = zone.keys.keyset().dnskey_signers[0]
    return f"corp.internal. DS {ksk.ds().to_text()}"


CASES = [
    ("www.corp.internal.", "A", dns.rcode.NOERROR, True),  # positive
    ("chain.corp.internal.", "A", dns.rcode.NOERROR, True),  # CNAME chain
    ("nope.corp.internal.", "A", dns.rcode.NXDOMAIN, False),  # NXDOMAIN
    ("www.corp.internal.", "MX", dns.rcode.NOERROR, False),  # NODATA
    ("b.c.corp.internal.", "A", dns.rcode.NOERROR, False),  # NODATA at an empty non-terminal
    ("anything.wild.corp.internal.", "A", dns.rcode.NOERROR, True),  # wildcard
    ("anything.wild.corp.internal.", "MX", dns.rcode.NOERROR, False),  # wildcard NODATA
    ("x.y.wild.corp.internal.", "A", dns.rcode.NOERROR, True),  # wildcard, next closer two labels down
    ("sub.corp.internal.", "DS", dns.rcode.NOERROR, False),  # no DS at an insecure delegation
]


@pytest.mark.slow
def test_unbound_validates_answers_as_secure(served: tuple[ServedZone, int], tmp_path: Path) -> None:
    need("unbound")
    zone, port = served
    process, listen = unbound(tmp_path, port, _ds(zone))
    try:
        for name, rdtype, rcode, has_answer in CASES:
            query = dns.message.make_query(name, rdtype, want_dnssec=True)
            response = dns.query.udp(query, "127.0.0.1", port=listen, timeout=5)
            assert response.rcode() == rcode, (name, rdtype, response)
            assert bool(response.answer) == has_answer, (name, rdtype, response)
            assert response.flags & dns.flags.AD, (name, rdtype, response)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_delv_validates_answers_as_secure(served: tuple[ServedZone, int], tmp_path: Path) -> None:
    need("delv")
    zone, port = served
    assert zone.keys is not None
    ksk = zone.keys.keyset().dnskey_signers[0]
    anchors = tmp_path / "anchors.conf"
    ds: Any = ksk.ds()
    digest = ds.digest.hex()
    anchors.write_text(
        f'trust-anchors {{ "corp.internal." static-ds {ds.key_tag} {ds.algorithm} {ds.digest_type} "{digest}"; }};'
    )
    for name, rdtype, _, _ in CASES:
        result = subprocess.run(
            ["delv", "@127.0.0.1", "-p", str(port), "-a", str(anchors), "+root=corp.internal", name, rdtype],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "; fully validated" in result.stdout or "; negative response, fully validated" in result.stdout, (
            name,
            rdtype,
            result.stdout + result.stderr,
        )


@pytest.mark.slow
def test_unbound_validates_compact_denial(tmp_path: Path) -> None:
    need("unbound")
    zone = signed_zone(tmp_path, denial="compact")
    with serving(Authority([zone])) as (_, server):
        process, listen = unbound(tmp_path, server.port, _ds(zone))
        try:
            for name, rdtype, _, has_answer in CASES:
                query = dns.message.make_query(name, rdtype, want_dnssec=True)
                response = dns.query.udp(query, "127.0.0.1", port=listen, timeout=5)
                # Compact denial answers a non-existent name with NOERROR (RFC 9824): no NXDOMAIN here.
                assert response.rcode() == dns.rcode.NOERROR, (name, rdtype, response)
                assert bool(response.answer) == has_answer, (name, rdtype, response)
                assert response.flags & dns.flags.AD, (name, rdtype, response)
        finally:
            process.kill()
            process.wait()
