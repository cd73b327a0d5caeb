"""RRL keyed by response class (answers per question, NXDOMAIN per zone, errors per prefix) with an exempt list
and DNS cookies (RFC 7873); NSID (RFC 5001); a validating Unbound at 150 q/s of distinct names is never
throttled."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from authority_lab import ZONE_TEXT, need, serving, signed_zone, unbound
from ztdns.authority.handler import Authority
from ztdns.authority.rrl import RateLimiter
from ztdns.client import ClientInfo, Transport

FLOODER = ClientInfo(Transport.UDP, "192.0.2.7", 4000)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ask(authority: Authority, name: str, client: ClientInfo = FLOODER, **edns: object) -> dns.message.Message | None:
    query = dns.message.make_query(name, "A", use_edns=0, **edns)  # type: ignore[arg-type]
    wire = authority.fast(query.to_wire(), client)
    if not wire:
        return None
    response = dns.message.from_wire(wire)
    return None if response.flags & dns.flags.TC and not response.answer else response


def _names_zone(count: int) -> str:
    return ZONE_TEXT + "".join(f"h{i} A 10.0.{i >> 8}.{i & 255}\n" for i in range(count))


def test_buckets_by_response_class(tmp_path: Path) -> None:
    limiter = RateLimiter(rate=2, burst=4, slip=0, clock=Clock(), exempt=[ipaddress.ip_network("198.51.100.0/24")])
    authority = Authority([signed_zone(tmp_path, _names_zone(200))], rrl=limiter)
    # 200 distinct names from one /24: every one answered (a resolver at work, not an amplification).
    assert all(_ask(authority, f"h{i}.corp.internal.") for i in range(200))
    # The same name over and over: limited after the burst.
    assert [bool(_ask(authority, "www.corp.internal.")) for _ in range(6)] == [True] * 4 + [False] * 2
    # Random NXDOMAINs share one bucket per zone.
    nx = [_ask(authority, f"{os.urandom(4).hex()}.corp.internal.") for _ in range(8)]
    assert sum(r is not None for r in nx) == 4
    # Errors (REFUSED outside the zones) share one bucket per prefix.
    refused = [_ask(authority, f"x{i}.example.") for i in range(8)]
    assert sum(r is not None for r in refused) == 4
    # Exempt networks are never limited.
    trusted = ClientInfo(Transport.UDP, "198.51.100.9", 53)
    assert all(_ask(authority, "www.corp.internal.", trusted) for _ in range(20))


def test_valid_cookie_is_not_rate_limited_and_nsid(tmp_path: Path) -> None:
    limiter = RateLimiter(rate=1, burst=1, slip=0, clock=Clock())
    authority = Authority([signed_zone(tmp_path)], rrl=limiter, nsid=b"ns1.test")
    client_cookie = os.urandom(8)
    first = _ask(authority, "www.corp.internal.", options=[dns.edns.CookieOption(client_cookie, b"")])
    assert first is not None
    (cookie,) = [o for o in first.options if isinstance(o, dns.edns.CookieOption)]
    assert cookie.client == client_cookie and len(cookie.server) == 16  # RFC 9018: version, time, hash
    with_cookie = [dns.edns.CookieOption(client_cookie, cookie.server)]
    assert all(_ask(authority, "www.corp.internal.", options=with_cookie) for _ in range(10))
    # A forged or another address's cookie is no exemption.
    forged = [dns.edns.CookieOption(client_cookie, cookie.server[:8] + os.urandom(8))]
    assert not all(_ask(authority, "www.corp.internal.", options=forged) for _ in range(3))
    other = ClientInfo(Transport.UDP, "203.0.113.5", 53)
    assert not all(_ask(authority, "www.corp.internal.", other, options=with_cookie) for _ in range(3))
    query = dns.message.make_query("mail.corp.internal.", "A", use_edns=0, options=[dns.edns.NSIDOption(b"")])
    (wire,) = authority.respond(query.to_wire(), ClientInfo(Transport.TCP, "127.0.0.1", 1, stream=True))
    nsid = dns.message.from_wire(wire)
    assert nsid is not None
    assert [o.nsid for o in nsid.options if isinstance(o, dns.edns.NSIDOption)] == [b"ns1.test"]


@pytest.mark.slow
def test_unbound_at_150_qps_of_distinct_names_is_not_throttled(tmp_path: Path) -> None:
    need("unbound")
    zone = signed_zone(tmp_path / "state", _names_zone(1000))
    assert zone.keys is not None
    anchor = f"corp.internal. DS {zone.keys.keyset().dnskey_signers[0].ds().to_text()}"
    # The default RRL (20/s, burst 40 per bucket); all of Unbound's queries come from 127.0.0.1.
    authority = Authority([zone], rrl=RateLimiter())
    with serving(authority) as (_, server):
        process, listen = unbound(tmp_path, server.port, anchor)
        try:
            rcodes, latencies = [], []
            start = time.monotonic()
            for i in range(600):  # 4 s at 150 q/s
                time.sleep(max(0.0, start + i / 150 - time.monotonic()))
                sent = time.monotonic()
                query = dns.message.make_query(f"h{i}.corp.internal.", "A", want_dnssec=True)
                response = dns.query.udp(query, "127.0.0.1", port=listen, timeout=5)
                latencies.append(time.monotonic() - sent)
                rcodes.append(response.rcode())
                assert response.flags & dns.flags.AD, response
        finally:
            process.terminate()
            process.wait()
    assert rcodes.count(dns.rcode.NOERROR) == 600
    assert (authority.stats.rrl_dropped, authority.stats.rrl_slipped) == (0, 0)
    assert sum(latencies) / len(latencies) < 0.05
