"""``[authority]`` zones inside the real ``ztdns serve``: own UDP+TCP listeners (signed answers, AXFR with TSIG,
dynamic UPDATE), the resolver's view of the zones (after policy, AA/AD), one /metrics, SIGHUP and SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.update
import dns.xfr
import dns.zone
import pytest

from authority_lab import ORIGIN, TSIG_SECRET, ZONE_TEXT, keyring
from fixtures.server import ServerProcess
from fixtures.unbound import free_port

pytestmark = pytest.mark.slow

EXTRA_RECORDS = """
secret   A   192.0.2.99
leak     CNAME secret
"""
WEB_NAME = "web.prod.svc.corp.internal."


def _config(state: Path, resolver_port: int, metrics_port: int) -> str:
    return f"""
[server]
state_dir = "{state}"

[[listen]]
transport = "udp"
address = "127.0.0.1:{resolver_port}"

[[listen]]
transport = "tcp"
address = "127.0.0.1:{resolver_port}"

[resolver]
mode = "none"

[identities.office]
networks = ["127.0.0.1/32"]
policies = ["internal"]

[unknown_clients]
action = "refuse"

[policies.internal]
allow = ["corp.internal", "**.corp.internal"]
deny = ["secret.corp.internal"]

[log.query_log]
output = "off"

[metrics]
address = "127.0.0.1:{metrics_port}"

[authority]
listen = ["127.0.0.1:0"]

[authority.tsig_keys."xfr"]
secret = "{TSIG_SECRET}"

[authority.tsig_keys."web-key"]
secret = "{TSIG_SECRET}"
identity = "spiffe://corp/ns/prod/sa/web"

[[authority.zones]]
name = "corp.internal"
file = "corp.zone"
transfer_keys = ["xfr"]

[[authority.zones.grants]]
identity = "spiffe://corp/ns/{{ns}}/sa/{{sa}}"
names = ["{{sa}}.{{ns}}.svc.corp.internal"]
"""


class Served:
    def __init__(self, process: ServerProcess, directory: Path, resolver_port: int, metrics_port: int) -> None:
        self.process = process
        self.directory = directory
        self.resolver_port = resolver_port
        self.metrics_port = metrics_port
        found = re.search(r"listening on authority udp\+tcp 127\.0\.0\.1:(\d+)", process.stderr)
        assert found, process.stderr
        self.port = int(found.group(1))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("serve-authority")
    (directory / "corp.zone").write_text(ZONE_TEXT + EXTRA_RECORDS)
    resolver_port, metrics_port = free_port(), free_port()
    process = ServerProcess(_config(directory / "state", resolver_port, metrics_port), directory)
    process.start()
    yield Served(process, directory, resolver_port, metrics_port)
    # SIGTERM drains and exits 0.
    assert process.stop() == 0, process.stderr


def _dnskey(port: int) -> dns.rrset.RRset:
    response = dns.query.tcp(dns.message.make_query(ORIGIN, "DNSKEY", want_dnssec=True), "127.0.0.1", port=port)
    dnskey, rrsig = response.answer[0], response.answer[1]
    dns.dnssec.validate(dnskey, rrsig, {ORIGIN: dnskey})
    return dnskey


def _validate(response: dns.message.Message, dnskey: dns.rrset.RRset) -> None:
    """Every RRset in answer and authority has a valid RRSIG by our DNSKEY."""
    checked = 0
    for section in (response.answer, response.authority):
        signed = {(r.name, r.covers) for r in section if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in (r for r in section if r.rdtype != dns.rdatatype.RRSIG):
            checked += 1
            assert (rrset.name, rrset.rdtype) in signed, rrset
            sig = next(
                r
                for r in section
                if r.rdtype == dns.rdatatype.RRSIG and r.name == rrset.name and r.covers == rrset.rdtype
            )
            dns.dnssec.validate(rrset, sig, {ORIGIN: dnskey})
    assert checked


def _serial(port: int) -> int:
    response = dns.query.udp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1", port=port, timeout=3)
    serial: int = response.answer[0][0].serial
    return serial


def test_own_listeners_answer_signed(served: Served) -> None:
    dnskey = _dnskey(served.port)
    query = dns.message.make_query("www.corp.internal.", "A", want_dnssec=True)
    response = dns.query.udp(query, "127.0.0.1", port=served.port, timeout=3)
    assert response.flags & dns.flags.AA and not response.flags & dns.flags.AD
    assert response.answer[0][0].address == "192.0.2.10"
    _validate(response, dnskey)
    missing = dns.query.udp(
        dns.message.make_query("nope.corp.internal.", "A", want_dnssec=True), "127.0.0.1", port=served.port, timeout=3
    )
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert any(r.rdtype == dns.rdatatype.NSEC3 for r in missing.authority)
    _validate(missing, dnskey)
    # The authority's listeners are not the resolver: names outside the zones are refused, no policy applies.
    assert dns.query.udp(
        dns.message.make_query("secret.corp.internal.", "A"), "127.0.0.1", port=served.port, timeout=3
    ).answer
    outside = dns.query.udp(dns.message.make_query("example.com.", "A"), "127.0.0.1", port=served.port, timeout=3)
    assert outside.rcode() == dns.rcode.REFUSED


def test_axfr_over_tcp_with_tsig(served: Served) -> None:
    dnskey = _dnskey(served.port)
    zone = dns.zone.Zone(ORIGIN, relativize=False)
    query, _ = dns.xfr.make_query(zone, keyring=keyring(), keyname=dns.name.from_text("xfr."))
    dns.query.inbound_xfr("127.0.0.1", zone, query, port=served.port, timeout=5)
    rdtypes = {rdataset.rdtype for _, node in zone.items() for rdataset in node}
    assert {dns.rdatatype.SOA, dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG, dns.rdatatype.NSEC3} <= rdtypes
    # The whole zone: transfers are not filtered by resolver policy.
    assert zone.get_rdataset("secret.corp.internal.", "A") is not None
    www = zone.find_rrset("www.corp.internal.", "A")
    sigs = zone.find_rrset("www.corp.internal.", dns.rdatatype.RRSIG, dns.rdatatype.A)
    dns.dnssec.validate(www, sigs, {ORIGIN: dnskey})
    # Without the key: refused.
    with pytest.raises(dns.xfr.TransferError):
        dns.query.inbound_xfr("127.0.0.1", dns.zone.Zone(ORIGIN), port=served.port, timeout=5)


def test_resolver_view_after_policy(served: Served) -> None:
    dnskey = _dnskey(served.port)
    port = served.resolver_port
    query = dns.message.make_query("www.corp.internal.", "A", want_dnssec=True)
    response = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
    assert response.rcode() == dns.rcode.NOERROR
    # Authoritative data, signed in this process: AA and (the client asked with DO) AD; RRSIGs included.
    assert response.flags & dns.flags.AA and response.flags & dns.flags.AD and response.flags & dns.flags.RA
    _validate(response, dnskey)
    plain = dns.query.udp(dns.message.make_query("www.corp.internal.", "A"), "127.0.0.1", port=port, timeout=3)
    assert not plain.flags & dns.flags.AD and len(plain.answer) == 1  # no DO, no AD bit in the query
    nodata = dns.query.tcp(
        dns.message.make_query("www.corp.internal.", "TXT", want_dnssec=True), "127.0.0.1", port=port
    )
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AD
    _validate(nodata, dnskey)
    # Policy first: a denied name in the zone, and a CNAME in the zone leading to it, are blocked.
    for name in ("secret.corp.internal.", "leak.corp.internal."):
        blocked = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1", port=port, timeout=3)
        assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
        assert any(option.otype == 15 for option in blocked.options), name  # EDE (15 Blocked)
    # An unknown client never reaches zone data.
    refused = dns.query.udp(
        dns.message.make_query("www.corp.internal.", "A"), "127.0.0.1", port=port, timeout=3, source="127.0.0.2"
    )
    assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
    # A referral is not an answer for a resolver client: the query goes on to the resolver (mode "none" here
    # refuses; the authority would have answered NOERROR with the delegation's NS).
    below = dns.query.udp(dns.message.make_query("host.sub.corp.internal.", "A"), "127.0.0.1", port=port, timeout=3)
    assert below.rcode() == dns.rcode.REFUSED and not below.authority


def test_update_changes_zone_serial_and_view(served: Served) -> None:
    before = _serial(served.port)
    # Asked through the resolver first, twice: the second answer is a replay of the first.
    for _ in range(2):
        earlier = dns.message.make_query(WEB_NAME, "A", want_dnssec=True)
        old = dns.query.udp(earlier, "127.0.0.1", port=served.resolver_port, timeout=3)
        assert old.rcode() == dns.rcode.NXDOMAIN  # not registered yet
    update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("web-key."))
    update.replace(WEB_NAME, 30, "A", "10.1.2.3")
    assert dns.query.tcp(update, "127.0.0.1", port=served.port, timeout=5).rcode() == dns.rcode.NOERROR
    assert _serial(served.port) == before + 1
    # Visible at once through the resolver too (the replay of the old version is no longer valid), signed.
    query = dns.message.make_query(WEB_NAME, "A", want_dnssec=True)
    response = dns.query.udp(query, "127.0.0.1", port=served.resolver_port, timeout=3)
    assert response.answer[0][0].address == "10.1.2.3" and response.flags & dns.flags.AD
    _validate(response, _dnskey(served.port))
    # A name the key's identity is not granted: refused, zone and serial unchanged.
    other = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("web-key."))
    other.replace("db.prod.svc.corp.internal.", 30, "A", "10.6.6.6")
    assert dns.query.tcp(other, "127.0.0.1", port=served.port, timeout=5).rcode() == dns.rcode.REFUSED
    assert _serial(served.port) == before + 1


def test_one_metrics_endpoint(served: Served) -> None:
    dns.query.udp(dns.message.make_query("mail.corp.internal.", "A"), "127.0.0.1", port=served.port, timeout=3)
    dns.query.udp(dns.message.make_query("mail.corp.internal.", "A"), "127.0.0.1", port=served.resolver_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    assert re.search(r'ztdns_queries_total\{kind="authoritative(_replay)?",rcode="NOERROR",transport="udp"\}', text)
    assert "ztdns_authority_transfers_total" in text and "ztdns_authority_updates_total" in text
    assert re.search(r'ztdns_authority_zone_serial\{zone="corp.internal."\} \d', text)
    assert re.search(r'ztdns_authority_signatures_total\{zone="corp.internal."\} [1-9]', text)
    assert "ztdns_cache_entries" in text  # the resolver's metrics on the same page


def test_sighup_reloads_changed_zones(served: Served) -> None:
    before = _serial(served.port)
    # The file keeps serial 1: the reloaded zone still gets a serial after the one served.
    (served.directory / "corp.zone").write_text(ZONE_TEXT + EXTRA_RECORDS + "added A 192.0.2.77\n")
    served.process.signal(signal.SIGHUP)
    assert served.process.wait_stderr("zones rebuilt: corp.internal."), served.process.stderr
    assert _serial(served.port) == before + 1
    for port in (served.port, served.resolver_port):
        query = dns.message.make_query("added.corp.internal.", "A", want_dnssec=True)
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
        assert response.answer[0][0].address == "192.0.2.77"
        _validate(response, _dnskey(served.port))
    # Dynamic registrations survive the rebuild (read back from the state directory).
    registered = dns.query.udp(dns.message.make_query(WEB_NAME, "A"), "127.0.0.1", port=served.port, timeout=3)
    assert registered.answer[0][0].address == "10.1.2.3"
    # A broken zone file is rejected; the zone keeps serving.
    (served.directory / "corp.zone").write_text("this is not a zone\n")
    served.process.signal(signal.SIGHUP)
    assert served.process.wait_stderr("[authority] rejected"), served.process.stderr
    assert _serial(served.port) == before + 1
    assert dns.query.udp(dns.message.make_query("added.corp.internal.", "A"), "127.0.0.1", port=served.port).answer


def test_authority_needs_one_process(tmp_path: Path) -> None:
    (tmp_path / "corp.zone").write_text(ZONE_TEXT)
    config = _config(tmp_path / "state", free_port(), free_port()).replace("[server]", "[server]\nworkers = 2")
    path = tmp_path / "ztdns.toml"
    path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "ztdns", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "ztdns.toml:3: server.workers: [authority] zones are one process's state" in done.stderr, done.stderr


def test_check_reads_zone_files(tmp_path: Path) -> None:
    (tmp_path / "corp.zone").write_text("www A 192.0.2.1\n")  # no SOA
    path = tmp_path / "ztdns.toml"
    path.write_text(_config(tmp_path / "state", free_port(), free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "ztdns", "check", "--config", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert re.search(r"ztdns.toml:\d+: authority.zones\[0\].file: zone corp.internal.", done.stderr), done.stderr
    assert not (tmp_path / "state").exists()  # check touches no keys
