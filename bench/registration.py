"""Registration and deletion latency on a large signed zone (issue 15: ≤ 10 ms p99 on 50,000 names).

    python bench/registration.py [--names 50000] [--count 2000]

Builds a signed NSEC3 zone of ``--names`` hosts (ECDSA P-256 file keys in a temporary state directory), then
sends ``--count`` TSIG-signed RFC 2136 UPDATEs registering new names through the authority's ``respond`` (wire in,
wire out: parsing, TSIG, grant check, the new version with its NSEC3 chain, the state journal), then the first
DNSSEC answer for each new name (signs its RRset), then UPDATEs deleting them and an NXDOMAIN for each (signs the
NSEC3 records that now cover it). Prints p50/p99/max of each, wall-clock and CPU time (on a loaded machine the
wall time includes waiting for a core), and the time of a whole rebuild for comparison.
The garbage collector is settled after loading as ``ztdns serve`` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.tsigkeyring
import dns.update

from ztdns.authority.handler import Authority, Quota, ServedZone, ZoneSettings
from ztdns.authority.kasp import KeyManager, Policy
from ztdns.authority.nsec3 import Nsec3Chain
from ztdns.authority.update import Grant
from ztdns.authority.zone import Zone
from ztdns.client import ClientInfo, Transport
from ztdns.daemon import settle_garbage_collector

ORIGIN = dns.name.from_text("bench.internal.")
KEY = dns.name.from_text("web-key.")
KEYRING = dns.tsigkeyring.from_text({"web-key.": ("hmac-sha256", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==")})
CLIENT = ClientInfo(Transport.UDP, "127.0.0.1", 5300)
HEAD = "$TTL 300\n@ SOA ns1 hostmaster 1 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n"


def zone(names: int, state: Path) -> ServedZone:
    text = HEAD + "".join(f"h{i}.pod{i % 97} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(names))
    settings = ZoneSettings(
        ORIGIN, grants=(Grant("tsig:web-key.", ("**.bench.internal",)),), state_path=state / "z.json", quota=Quota(0, 0)
    )
    return ServedZone(settings, Zone.from_text(text, ORIGIN), KeyManager(ORIGIN, Policy(), state))


def update(name: dns.name.Name, delete: bool) -> bytes:
    message = dns.update.UpdateMessage(ORIGIN)
    if delete:
        message.delete(name)
    else:
        message.replace(name, 60, "A", "10.255.0.1")
    message.use_tsig(KEYRING, KEY)
    return message.to_wire()


def query(name: dns.name.Name) -> bytes:
    return dns.message.make_query(name, "A", want_dnssec=True).to_wire()


def timed(authority: Authority, wires: list[bytes], rcode: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (this thread's) seconds per request: on a loaded machine the wall time includes waiting
    for a core, which the CPU time does not."""
    times, cpu = [], []
    for wire in wires:
        started, started_cpu = time.perf_counter(), time.thread_time()
        responses = authority.respond(wire, CLIENT)
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
        got = dns.message.from_wire(responses[0], keyring=False) if responses else None
        if got is None or got.rcode() != rcode:
            sys.exit(f"unexpected response: {got}")
    return times, cpu


def report(label: str, measured: tuple[list[float], list[float]]) -> None:
    for kind, unsorted in zip(("wall", "CPU"), measured, strict=True):
        times = sorted(unsorted)
        p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{label:<24}{kind:>5}  p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  max {times[-1] * 1e3:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=50_000)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        served = zone(args.names, Path(state))
        authority = Authority([served], keyring=KEYRING)
        print(f"loaded {args.names} names in {time.perf_counter() - started:.1f} s")
        settle_garbage_collector()
        names = [dns.name.from_text(f"web{i}.svc{i % 50}", ORIGIN) for i in range(args.count)]
        report("register (UPDATE)", timed(authority, [update(n, False) for n in names], dns.rcode.NOERROR))
        report("first signed answer", timed(authority, [query(n) for n in names], dns.rcode.NOERROR))
        report("delete (UPDATE)", timed(authority, [update(n, True) for n in names], dns.rcode.NOERROR))
        report("NXDOMAIN after delete", timed(authority, [query(n) for n in names], dns.rcode.NXDOMAIN))
        version = served.version.zone
        started = time.perf_counter()
        Nsec3Chain(Zone(version.origin, dict(version.nodes)))
        print(f"a whole rebuild (indexes and NSEC3 chain): {(time.perf_counter() - started) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
