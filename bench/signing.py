"""Signing and signed-answer throughput.

    python bench/signing.py [--seconds 3] [--qps-seconds 5]

1. RRSIG/s on one core with file keys (ECDSA P-256, Ed25519), ours vs dnspython's generic ``dns.dnssec.sign``,
   and with keys in a SoftHSM2 token made for the run.
2. Authoritative qps for signed answers (DO=1, random names, mix of positive/NXDOMAIN) with dnsperf: ztdns
   (``ztdns authority serve``) vs Knot DNS serving the same zone pre-signed (our AXFR output), same run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.rrset

from dnsperf_run import dnsperf_command, run_dnsperf
from ztdns.authority.keys import ECDSAP256SHA256, ED25519, FileKey, ZoneKey
from ztdns.authority.signing import ZoneSigner

ORIGIN = dns.name.from_text("bench.internal.")
HOSTS = 2000


def rrsets(count: int) -> list[dns.rrset.RRset]:
    return [
        dns.rrset.from_text(f"h{i}.bench.internal.", 300, "IN", "A", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        for i in range(count)
    ]


def sign_rate(key: ZoneKey, seconds: float, how: str) -> float:
    """RRSIG/s made by ``how``: "ztdns" (our signer), "dnspython" (``dns.dnssec.sign``, file keys only) or
    "raw" (the key's private-key operation alone over 100 bytes: the ceiling)."""
    signer = ZoneSigner(ORIGIN)
    data = rrsets(1000)
    payload = bytes(100)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for rrset in data:
            if how == "dnspython":
                dns.dnssec.sign(rrset, key.private._key, ORIGIN, key.dnskey, lifetime=86400)  # type: ignore[attr-defined]
            elif how == "raw":
                key.private.sign(payload)
            else:
                signer.sign_fresh(rrset, key)
        done += len(data)
    return done / (time.perf_counter() - start)


SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def softhsm_rate(seconds: float) -> None:
    """RRSIG/s with keys in a SoftHSM2 token made for the run (ECDSA P-256 and Ed25519)."""
    if not (shutil.which("softhsm2-util") and Path(SOFTHSM).exists()):
        print("RRSIG/s softhsm2: skipped (needs Debian package softhsm2)")
        return
    from ztdns.authority.pkcs11 import Token, TokenSettings

    work = Path(tempfile.mkdtemp(prefix="ztdns-bench-hsm-"))
    try:
        (work / "tokens").mkdir()
        conf = work / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {work}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"],
            check=True,
            capture_output=True,
        )
        token = Token(TokenSettings(SOFTHSM, "bench", "1234"))
        for name, algorithm in (("ecdsap256", ECDSAP256SHA256), ("ed25519", ED25519)):
            key = ZoneKey.make(ORIGIN, token.generate(algorithm, f"bench {name}"), sep=False)
            ours = sign_rate(key, seconds, "ztdns")
            raw = sign_rate(key, seconds, "raw")
            print(f"RRSIG/s {name} softhsm2: ztdns {ours:,.0f}  (raw token sign {raw:,.0f})")
        token.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for(port: int) -> None:
    for _ in range(100):
        try:
            dns.query.udp(dns.message.make_query(ORIGIN, "SOA"), "127.0.0.1", port=port, timeout=0.2)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def dnsperf(port: int, queries: Path, seconds: float | None) -> float:
    """Queries per second; ``seconds=None`` makes one pass through the query file (the warm-up)."""
    command = dnsperf_command("127.0.0.1", port, queries, seconds=seconds, clients=4, extra=["-D", "-Q", "200000"])
    return run_dnsperf(command).qps


def qps(seconds: float) -> None:
    if not (shutil.which("dnsperf") and shutil.which("knotd")):
        print("qps: skipped (needs dnsperf and knotd)")
        return
    work = Path(tempfile.mkdtemp(prefix="ztdns-bench-"))
    zone = work / "bench.zone"
    zone.write_text(
        "$TTL 300\n@ SOA ns1 hostmaster 1 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n"
        + "".join(f"h{i} A 10.0.{i >> 8 & 255}.{i & 255}\n" for i in range(HOSTS))
    )
    ours = free_port()
    config = work / "ztdns.toml"
    config.write_text(
        textwrap.dedent(f"""
        [server]
        state_dir = "{work}/state"
        [authority]
        listen = ["127.0.0.1:{ours}"]
        rrl = {{ enabled = false }}
        [authority.tsig_keys.xfr]
        secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
        [[authority.zones]]
        name = "bench.internal"
        file = "bench.zone"
        transfer_networks = ["127.0.0.0/8"]
        """)
    )
    queries = work / "queries"
    names = [
        f"h{random.randrange(HOSTS)}" if random.random() < 0.8 else f"n{random.randrange(10**6)}" for _ in range(20000)
    ]
    queries.write_text("".join(f"{n}.bench.internal. A\n" for n in names))
    server = subprocess.Popen(
        [sys.executable, "-m", "ztdns", "authority", "serve", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    knot = None
    try:
        wait_for(ours)
        signed = work / "signed.zone"
        lines = [r.to_text() for m in dns.query.xfr("127.0.0.1", ORIGIN, port=ours, relativize=False) for r in m.answer]
        signed.write_text("\n".join(lines[:-1]) + "\n")
        # One pass first for both servers: ztdns signs and renders each distinct answer on first sight (the
        # cold figure); knotd loads its pre-signed zone. The timed runs then measure serving signed answers.
        cold = dnsperf(ours, queries, None)
        ztdns_qps = dnsperf(ours, queries, seconds)
        theirs = free_port()
        (work / "knot.conf").write_text(
            textwrap.dedent(f"""
            server:
              listen: 127.0.0.1@{theirs}
              rundir: {work}
            database:
              storage: {work}/knotdb
            template:
              - id: default
                storage: {work}
                zonefile-load: whole
                journal-content: none
            zone:
              - domain: bench.internal
                file: signed.zone
            """)
        )
        knot = subprocess.Popen(
            ["knotd", "-c", str(work / "knot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(theirs)
        dnsperf(theirs, queries, None)
        knot_qps = dnsperf(theirs, queries, seconds)
        ratio = ztdns_qps / knot_qps
        print(f"signed answers qps: ztdns {ztdns_qps:,.0f}  knotd presigned {knot_qps:,.0f}  ratio {ratio:.2f}")
        print(f"  ztdns first pass (every distinct answer signed and rendered on first sight): {cold:,.0f} qps")
    finally:
        for process in (server, knot):
            if process is not None:
                process.terminate()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--qps-seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()} (figures are for one core)")
    for name, algorithm in (("ecdsap256", ECDSAP256SHA256), ("ed25519", ED25519)):
        key = ZoneKey.make(ORIGIN, FileKey.generate(algorithm), sep=False)
        ours = sign_rate(key, args.seconds, "ztdns")
        reference = sign_rate(key, args.seconds, "dnspython")
        raw = sign_rate(key, args.seconds, "raw")
        print(
            f"RRSIG/s {name} file key: ztdns {ours:,.0f}  dnspython sign() {reference:,.0f}  "
            f"ratio {ours / reference:.2f}  (raw key.sign {raw:,.0f})"
        )
    softhsm_rate(args.seconds)
    qps(args.qps_seconds)


if __name__ == "__main__":
    main()
