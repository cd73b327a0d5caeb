"""Do53 over UDP: ztdns (policy on, forwarding, answers from cache after warm-up, one worker) vs Unbound
(one thread, the same names as local-data), measured with dnsperf in one run, alternating, with the ratio.

    .venv/bin/python bench/do53.py [--names 1000] [--seconds 10] [--rounds 3] [--clients 8] [--no-pin]
                                   [--detect off|observe|enforce]

Both servers are started by this script on free loopback ports and stopped at the end. ztdns forwards to a
third process (an Unbound holding the names) that is idle during measurement: every measured answer is a
cache hit of an allowed name, so this measures ztdns's hot path, not the upstream.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dnsperf_run import DnsperfResult, can_pin, dnsperf_command, pin_process, pinned, run_dnsperf
from fixtures.unbound import UnboundServer, free_port


def names(count: int) -> list[str]:
    return [f"host{i}.bench.test" for i in range(count)]


def dnsperf(port: int, data: Path, seconds: int, clients: int, pin: bool) -> DnsperfResult:
    command = dnsperf_command("127.0.0.1", port, data, seconds=seconds, clients=clients)
    return run_dnsperf(pinned(command) if pin else command)


def ztdns_config(port: int, upstream: str, detect: str = "off") -> str:
    return f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[resolver]
upstreams = [{{ address = "{upstream}" }}]

[identities.bench]
networks = ["127.0.0.0/8"]
policies = ["bench"]

[policies.bench]
allow = ["**.bench.test"]
deny = ["**.ads.bench.test"]

[dnssec]
validation = false  # the upstream serves unsigned private names

[log.query_log]
output = "off"

[metrics]
enabled = false

[detect]
mode = "{detect}"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin dnsperf and the servers to CPUs")
    parser.add_argument(
        "--detect", default="off", choices=["off", "observe", "enforce"], help="[detect] mode of ztdns (default off)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = directory / "queries.txt"
        data.write_text("".join(f"{name} A\n" for name in names(args.names)))
        local_data = [f"{name}. 300 IN A 192.0.2.{i % 250 + 1}" for i, name in enumerate(names(args.names))]
        upstream = UnboundServer.start(directory / "upstream", local_data, zones=("bench.test.",))
        peer = UnboundServer.start(directory / "peer", local_data, zones=("bench.test.",))  # num-threads: 1
        port = free_port()
        (directory / "ztdns.toml").write_text(ztdns_config(port, upstream.address, args.detect))
        ztdns = subprocess.Popen(
            [sys.executable, "-m", "ztdns", "serve", "--config", str(directory / "ztdns.toml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert ztdns.stderr is not None
            while "listening" not in (ztdns.stderr.readline() or "listening"):
                pass
            time.sleep(0.5)
            if args.pin and can_pin():
                pin_process(ztdns.pid)
                pin_process(peer.process.pid)
            else:
                args.pin = False
            dnsperf(port, data, 2, args.clients, args.pin)  # warm-up: every name into the cache and the replay table
            results: dict[str, list[float]] = {"ztdns": [], "unbound": []}
            for round_ in range(args.rounds):
                for label, target in (("ztdns", port), ("unbound", peer.port)):
                    result = dnsperf(target, data, args.seconds, args.clients, args.pin)
                    results[label].append(result.qps)
                    print(
                        f"round {round_ + 1}: {label:8s} {result.qps:10.0f} q/s  lost {result.lost_percent:.2f}%  "
                        f"latency {result.latency_ms:.3f} ms",
                        flush=True,
                    )
        finally:
            ztdns.send_signal(signal.SIGTERM)
            ztdns.wait(10)
            upstream.stop()
            peer.stop()
    ours, theirs = statistics.median(results["ztdns"]), statistics.median(results["unbound"])
    print(f"median: ztdns {ours:.0f} q/s, unbound {theirs:.0f} q/s, ratio ztdns/unbound {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
