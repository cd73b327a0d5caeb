"""Do53 over UDP: ztdns (policy on, forwarding, answers from cache after warm-up, one worker) vs Unbound
(one thread, the same names as local-data, no query log), measured with dnsperf over a grid of load shapes,
alternating, with the worst ratio over the grid and each server's CPU per query.

    .venv/bin/python bench/do53.py [--names 1000] [--seconds 5] [--rounds 2] [--grid full|1x64,4x256,...]
                                   [--query-log file|off|both] [--detect off|observe|enforce|both] [--no-pin]
                                   [--realtime]
                                   [--baseline OTHER-CHECKOUT/src]

ztdns runs in the default configuration first: the query log on, the default JSON sink writing to a file
(``--query-log file``); ``--query-log both`` adds a second ztdns with the log off, alternating with the first, and
prints what the log costs per answer (the difference of the two servers' CPU per query, whole process: serving
thread and log writer) — the log-cost bench. ``ZTDNS_UDP_BATCH=0`` in the environment runs ztdns's pure-Python
UDP lane instead of the batched one (``--lanes both`` starts one of each, for an A/B comparison in one run).
``--baseline DIR`` starts, beside each ztdns, one running the package in DIR (another checkout's ``src``, with its
``_udpbatch`` built): an A/B comparison of two versions, alternating, in one run.

All servers are started by this script on free loopback ports and stopped at the end. ztdns forwards to a
third process (an Unbound holding the names) that is idle during measurement: every measured answer is a
cache hit of an allowed name, so this measures ztdns's hot path, not the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dnsperf_run import Contender, compare_grid, dnsperf_command, parse_grid, run_dnsperf_async, shaped
from fixtures.unbound import UnboundServer, free_port


def names(count: int) -> list[str]:
    return [f"host{i}.bench.test" for i in range(count)]


def ztdns_config(port: int, upstream: str, query_log: Path | None, detect: str | None = None) -> str:
    log = f'output = "{query_log}"' if query_log is not None else 'output = "off"'
    detect_section = f'[detect]\nmode = "{detect}"' if detect is not None else ""  # None: the default config
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
{log}

[metrics]
enabled = false

{detect_section}
"""


class Ztdns:
    """``ztdns serve`` on a free port, its query log to ``query_log`` (None: off)."""

    def __init__(
        self,
        directory: Path,
        label: str,
        upstream: str,
        query_log: Path | None,
        batch: bool,
        detect: str | None,
        source: Path | None = None,
    ) -> None:
        """``source``: run the ztdns package under this directory (another checkout's ``src``) instead of ours."""
        self.label = label
        self.port = free_port()
        conf = directory / f"{label}.toml"
        conf.write_text(ztdns_config(self.port, upstream, query_log, detect))
        env = {**os.environ, "ZTDNS_UDP_BATCH": "1" if batch else "0"}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ztdns", "serve", "--config", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stderr is not None
        while "listening" not in (self.process.stderr.readline() or "listening"):
            pass

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per server and load shape")
    parser.add_argument(
        "--clients", type=int, help="one load shape, dnsperf -c CLIENTS -q 256 (the bench before the grid)"
    )
    parser.add_argument(
        "--grid", default="full", help="load shapes CLIENTSxOUTSTANDING,... (full: 1/4/16 × 64/256/1024)"
    )
    parser.add_argument("--query-log", choices=["file", "off", "both"], default="file")
    parser.add_argument(
        "--lanes", choices=["default", "both"], default="default", help="both: batched and pure-Python UDP lanes"
    )
    parser.add_argument(
        "--detect",
        choices=["off", "observe", "enforce", "both"],
        help="[detect] mode of ztdns (default: the config's default); both: observe and off, alternating",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin dnsperf and the servers to CPUs")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="root: dnsperf and the server under test at SCHED_FIFO during each run (a shared, loaded machine)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="A/B: also run the ztdns of another checkout's src directory (its _udpbatch built), each log setting",
    )
    args = parser.parse_args()
    if args.clients is not None:
        args.grid = f"{args.clients}x256"
    grid = parse_grid(args.grid)
    default_batch = os.environ.get("ZTDNS_UDP_BATCH", "1") != "0"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = directory / "queries.txt"
        data.write_text("".join(f"{name} A\n" for name in names(args.names)))
        local_data = [f"{name}. 300 IN A 192.0.2.{i % 250 + 1}" for i, name in enumerate(names(args.names))]
        upstream = UnboundServer.start(directory / "upstream", local_data, zones=("bench.test.",))
        peer = UnboundServer.start(directory / "peer", local_data, zones=("bench.test.",))  # num-threads: 1
        logs = {"file": [True], "off": [False], "both": [True, False]}[args.query_log]
        lanes = [default_batch] if args.lanes == "default" else [True, False]
        detects = ["observe", "off"] if args.detect == "both" else [args.detect]
        servers: dict[tuple[bool, bool, bool, str | None], Ztdns] = {}  # by (log on, batched lane, baseline, detect)
        try:
            for log_on, batch, baseline, detect in itertools.product(
                logs, lanes, [False, True] if args.baseline is not None else [False], detects
            ):
                label = "ztdns" + (" baseline" if baseline else "") + ("" if log_on else " log off")
                if args.lanes == "both":
                    label += " batch" if batch else " pure"
                if args.detect == "both":
                    label += f" detect {detect}"
                query_log = directory / f"{label.replace(' ', '-')}.jsonl" if log_on else None
                source = args.baseline if baseline else None
                servers[log_on, batch, baseline, detect] = Ztdns(
                    directory, label, upstream.address, query_log, batch, detect, source
                )
            await asyncio.sleep(0.5)
            for server in servers.values():  # warm-up: every name into the cache and the replay table
                await run_dnsperf_async(
                    dnsperf_command("127.0.0.1", server.port, data, seconds=2, clients=4, pin=args.pin)
                )

            contenders = [
                Contender(s.label, s.process.pid, shaped(s.port, data, args.seconds, pin=args.pin))
                for s in servers.values()
            ]
            contenders.append(
                Contender("unbound", peer.process.pid, shaped(peer.port, data, args.seconds, pin=args.pin))
            )
            results = await compare_grid(
                "Do53 UDP", contenders, grid, args.rounds, pin=args.pin, realtime=args.realtime and args.pin
            )
            if args.query_log == "both":
                for batch, detect in itertools.product(lanes, detects):
                    on, off = servers[True, batch, False, detect], servers[False, batch, False, detect]
                    cost = sorted(r.median_cpu(on.label) - r.median_cpu(off.label) for r in results)
                    print(
                        f"query log cost ({on.label} vs {off.label}): median {statistics.median(cost):.2f} µs CPU "
                        f"per answer over the grid (whole process; range {cost[0]:.2f} to {cost[-1]:.2f})"
                    )
            if args.detect == "both":
                for log_on, batch in itertools.product(logs, lanes):
                    observe, off = servers[log_on, batch, False, "observe"], servers[log_on, batch, False, "off"]
                    ratios = sorted(r.ratio(observe.label, off.label) for r in results)
                    extra = statistics.median(r.median_cpu(observe.label) - r.median_cpu(off.label) for r in results)
                    print(
                        f"detection observe vs off ({observe.label} vs {off.label}): throughput ratio median "
                        f"{statistics.median(ratios):.3f}, worst {ratios[0]:.3f} over the grid; "
                        f"{extra:+.2f} µs CPU per answer (median)"
                    )
        finally:
            for server in servers.values():
                server.stop()
            upstream.stop()
            peer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
