"""The signed zone, transferred over AXFR, passes BIND's, ldns's and Knot's zone checkers; Unbound and delv, with
our DS as trust anchor, validate positive, NXDOMAIN, NODATA and wildcard answers as secure."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from tests.authority_lab import ORIGIN, free_port, keyring, need, serving, signed_zone
from ztdns.authority.service import Authority, ServedZone
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
    from ztdns.dnssec.kasp import Policy
    from ztdns.dnssec.keys import ALGORITHMS

    zone = signed_zone(
        tmp_path,
        policy=Policy(algorithm=ALGORITHMS[request.param]),
        transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})),
    )
    with serving(Authority([zone], keyring=keyring())) as (_, server):
        yield zone, server.port


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
    result = subprocess.run([*tool, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_transfer_refused_without_key(served: tuple[ServedZone, int]) -> None:
    _, port = served
    query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
    response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    assert response.rcode() == dns.rcode.REFUSED


def _unbound(
    tmp_path: Path, port: int, anchor: str, stub: str = "corp.internal."
) -> tuple[subprocess.Popen[bytes], int]:
    listen = free_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        textwrap.dedent(f"""
        server:
          interface: 127.0.0.1@{listen}
          port: {listen}
          username: ""
          chroot: ""
          directory: "{tmp_path}"
          pidfile: ""
          use-syslog: no
          logfile: "{tmp_path}/unbound.log"
          verbosity: 1
          do-not-query-localhost: no
          domain-insecure: ""
          val-log-level: 2
          trust-anchor: "{anchor}"
          module-config: "validator iterator"
          cache-max-ttl: 1
          cache-max-negative-ttl: 1
          val-bogus-ttl: 1
          infra-cache-min-rtt: 20
        stub-zone:
          name: "{stub}"
          stub-addr: 127.0.0.1@{port}
        remote-control:
          control-enable: no
        """)
    )
    process = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query("corp.internal.", "SOA"), "127.0.0.1", port=listen, timeout=0.5)
            return process, listen
        except Exception:
            time.sleep(0.1)
    process.kill()
    raise AssertionError((tmp_path / "unbound.log").read_text())


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


def test_unbound_validates_answers_as_secure(served: tuple[ServedZone, int], tmp_path: Path) -> None:
    need("unbound")
    zone, port = served
    process, listen = _unbound(tmp_path, port, _ds(zone))
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


def test_delv_validates_answers_as_secure(served: tuple[ServedZone, int], tmp_path: Path) -> None:
    need("delv")
    zone, port = served
    assert zone.keys is not None
    ksk = zone.keys.keyset().dnskey_signers[0]
    anchors = tmp_path / "anchors.conf"
    anchors.write_text(f'trust-anchors {{ corp.internal. static-ds {ksk.ds().to_text().replace(" ", " ", 3)}; }};\n')
    ds = ksk.ds()
    anchors.write_text(
        f'trust-anchors {{ "corp.internal." static-ds {ds.key_tag} {ds.algorithm} {ds.digest_type} "{ds.digest.hex()}"; }};\n'
    )
    for name, rdtype, _, _ in CASES:
        result = subprocess.run(
            ["delv", "@127.0.0.1", "-p", str(port), "-a", str(anchors), "+root=corp.internal", name, rdtype],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "; fully validated" in result.stdout or "; negative response, fully validated" in result.stdout, (
            name,
            rdtype,
            result.stdout + result.stderr,
        )
