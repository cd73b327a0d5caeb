"""Response rate limiting (a prefix over its rate gets slipped TC answers and drops; other prefixes and TCP are
unaffected) and the Prometheus export of the authority's counters, in-process and from `ztdns authority
serve`."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from authority_lab import ZONE_TEXT, serving, signed_zone
from fixtures.unbound import free_port
from ztdns.authority.handler import Authority
from ztdns.authority.rrl import RateLimiter
from ztdns.client import ClientInfo, Transport
from ztdns.observe.metrics import MetricsCollector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(ident: int, name: str = "www.corp.internal.") -> bytes:
    message = dns.message.make_query(name, "A", want_dnssec=True)
    message.id = ident
    return message.to_wire()


def test_rate_limit_slips_and_drops_one_prefix_only(tmp_path: Path) -> None:
    clock = Clock()
    authority = Authority([signed_zone(tmp_path)], rrl=RateLimiter(rate=2, burst=4, slip=2, clock=clock))
    flooder = ClientInfo(Transport.UDP, "192.0.2.7", 4000)
    outcomes = []
    for ident in range(10):
        wire = authority.fast(query(ident), flooder)
        if not wire:
            outcomes.append("drop")
            continue
        response = dns.message.from_wire(wire)
        assert response.id == ident
        outcomes.append("slip" if response.flags & dns.flags.TC and not response.answer else "answer")
    # The burst is answered; past it every second response slips (TC, so a real client retries over TCP).
    assert outcomes == ["answer"] * 4 + ["drop", "slip"] * 3
    assert (authority.stats.rrl_dropped, authority.stats.rrl_slipped) == (3, 3)
    # The same /24 is limited, another /24 and TCP from the flooder are not.
    assert not authority.fast(query(11), ClientInfo(Transport.UDP, "192.0.2.200", 4000))
    neighbour = authority.fast(query(12), ClientInfo(Transport.UDP, "192.0.3.7", 4000))
    assert neighbour and dns.message.from_wire(neighbour).answer
    tcp = authority.fast(query(13), ClientInfo(Transport.TCP, "192.0.2.7", 4000, stream=True))
    assert tcp and dns.message.from_wire(tcp).answer
    # Tokens come back with time.
    clock.now += 1.0
    again = authority.fast(query(14), flooder)
    assert again and dns.message.from_wire(again).answer


def _blast(source: str, port: int, count: int) -> list[dns.message.Message]:
    """Send ``count`` queries at once from ``source`` and collect what comes back within a short wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for ident in range(count):
            sock.sendto(query(ident), ("127.0.0.1", port))
        sock.settimeout(0.3)
        replies = []
        try:
            while True:
                replies.append(dns.message.from_wire(sock.recv(65535)))
        except TimeoutError:
            return replies


def test_rate_limit_over_real_sockets(tmp_path: Path) -> None:
    # /32 buckets: 127.0.0.1 and 127.0.0.2 are different prefixes on loopback.
    limiter = RateLimiter(rate=1, burst=5, slip=2, ipv4_prefix=32)
    with serving(Authority([signed_zone(tmp_path)], rrl=limiter)) as (_, server):
        flood = _blast("127.0.0.1", server.port, 25)
        answered = [r for r in flood if r.answer]
        slipped = [r for r in flood if r.flags & dns.flags.TC and not r.answer]
        assert len(answered) <= 6 and len(slipped) >= 8 and len(flood) < 25
        other = _blast("127.0.0.2", server.port, 3)
        assert len(other) == 3 and all(r.answer for r in other)
        over_tcp = dns.query.tcp(dns.message.make_query("www.corp.internal.", "A"), "127.0.0.1", port=server.port)
        assert over_tcp.answer


def test_metrics_collector_exports_authority_counters(tmp_path: Path) -> None:
    authority = Authority([signed_zone(tmp_path)], rrl=RateLimiter(rate=1, burst=1, slip=1))
    udp = ClientInfo(Transport.UDP, "192.0.2.1", 1)
    for ident in range(3):
        authority.fast(query(ident), udp)
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: authority.metrics))
    text = generate_latest(registry).decode()
    assert 'ztdns_queries_total{kind="authoritative",rcode="NOERROR",transport="udp"} 1.0' in text
    assert "ztdns_authority_rrl_slipped_total 2.0" in text
    assert 'ztdns_authority_zone_serial{zone="corp.internal."} 1.0' in text
    assert "ztdns_authority_replay_entries 1.0" in text
    assert 'ztdns_authority_signatures_total{zone="corp.internal."}' in text


@pytest.mark.slow
def test_authority_serve_exposes_metrics(tmp_path: Path) -> None:
    dns_port, metrics_port = free_port(), free_port()
    (tmp_path / "corp.zone").write_text(ZONE_TEXT)
    config = tmp_path / "ztdns.toml"
    config.write_text(
        textwrap.dedent(f"""
        [server]
        state_dir = "{tmp_path}/state"
        [metrics]
        address = "127.0.0.1:{metrics_port}"
        [authority]
        listen = ["127.0.0.1:{dns_port}"]
        [[authority.zones]]
        name = "corp.internal"
        file = "corp.zone"
        """)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ztdns", "authority", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        response = None
        while response is None and time.monotonic() < deadline:
            try:
                response = dns.query.udp(
                    dns.message.make_query("www.corp.internal.", "A", want_dnssec=True),
                    "127.0.0.1",
                    port=dns_port,
                    timeout=0.3,
                )
            except (dns.exception.Timeout, OSError):
                if process.poll() is not None:
                    pytest.fail(process.stderr.read().decode() if process.stderr else "exited")
        assert response is not None and response.rcode() == dns.rcode.NOERROR
        dns.query.udp(dns.message.make_query("www.corp.internal.", "A", want_dnssec=True), "127.0.0.1", port=dns_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
            text = page.read().decode()
        assert 'ztdns_queries_total{kind="authoritative_replay",rcode="NOERROR",transport="udp"}' in text
        assert "ztdns_authority_updates_total 0.0" in text
    finally:
        process.terminate()
        process.wait(10)
