"""Recursion benchmark against the lab: the real ``ztdns serve`` (recursive, validating) vs Unbound (validating,
the same root hints and trust anchor), both in the lab's network namespace, in the same run.

ztdns is the whole server (policy allowing ``**``, message cache, replay fast path, one worker) started with
``ztdns serve --config``; Unbound runs one thread. Cold: the latency of each lab case on a fresh cache (cases
asked one after another, with DO, so both resolvers also warm their delegation caches the same way), in
``--cold-passes`` passes on freshly started servers; the per-case median is reported.
Warm: dnsperf qps over the cases that resolve, after a priming pass, alternating servers for ``--rounds``
rounds (the median is reported). Ratios are ztdns / Unbound.

    .venv/bin/python bench/recursion.py [--seconds 10] [--rounds 3] [--clients 8] [--dnssec-ok] [--cold-passes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode

from dnsperf_run import LOAD_CPU, can_pin, dnsperf_command, pin_process, run_dnsperf
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab
from ztdns.lab.serve import LabServer
from ztdns.lab.unbound import Unbound
from ztdns.lab.zones import CASES

ZTDNS, UNBOUND = "127.0.0.2", "127.0.0.1"


async def cold_latencies(server: str, quiet: bool = False) -> list[float]:
    """Milliseconds per lab case, in order, on a resolver that has seen nothing before (``quiet``: no notes of
    unexpected rcodes)."""
    times = []
    for case in CASES:
        query = dns.message.make_query(case.qname, case.qtype, want_dnssec=True)
        start = time.perf_counter()
        response = await dns.asyncquery.udp(query, server, 10)
        times.append((time.perf_counter() - start) * 1000)
        if not quiet and dns.rcode.to_text(response.rcode()) != case.rcode:
            print(f"  note: {server} answered {case.qname} {case.qtype} with {dns.rcode.to_text(response.rcode())}")
    return times


async def pin_this_thread() -> None:
    os.sched_setaffinity(0, {LOAD_CPU})


async def prime(server: str, queries: list[tuple[str, str]], dnssec_ok: bool) -> None:
    for qname, qtype in queries:
        await dns.asyncquery.udp(dns.message.make_query(qname, qtype, want_dnssec=dnssec_ok), server, 10)


def dnsperf(lab: Lab, server: str, query_file: Path, seconds: int, clients: int, dnssec_ok: bool) -> float:
    command = dnsperf_command(
        server,
        None,
        query_file,
        seconds=seconds,
        clients=clients,
        extra=["-D"] if dnssec_ok else [],
        prefix=netns.exec_prefix(lab.netns),
    )
    # dnsperf_command pins dnsperf to the load CPU, like the cold client: left to float, it shares the server's CPU.
    return run_dnsperf(command).qps


def servers_running(lab: Lab) -> contextlib.ExitStack:
    """Fresh Unbound and ztdns in the lab's namespace, both pinned to the server CPU when there is one."""
    stack = contextlib.ExitStack()
    unbound = stack.enter_context(Unbound(lab, address=UNBOUND))
    ztdns = stack.enter_context(LabServer(lab, address=ZTDNS))
    if can_pin():
        pin_process(unbound.pid)
        pin_process(ztdns.pid)
    for pid in (unbound.pid, ztdns.pid):
        settle(pid)
    return stack


def settle(pid: int, quiet: float = 0.3, longest: float = 10.0) -> None:
    """Wait until the process has used no CPU for ``quiet`` seconds: a server that has just started may still be
    working in the background (ztdns measures its code and dependencies for attestation, about 0.3 s of CPU), and
    a cold pass should time resolution, not start-up."""

    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    deadline = time.monotonic() + longest
    last, since = cpu(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


@contextlib.contextmanager
def lab_and_client() -> Iterator[tuple[Path, Lab, NetnsLoop]]:
    """A temporary directory, the lab in a namespace of its own, and the cold client's event loop in it."""
    with (
        tempfile.TemporaryDirectory() as directory,
        Lab(Path(directory), netns_name="auto") as lab,
        NetnsLoop(lab.netns) as loop,
    ):
        if can_pin():
            # The cold client on the load CPU, like dnsperf: it then never waits for the server's CPU, and
            # where the scheduler puts it does not move the figures from run to run.
            loop.run(pin_this_thread())
        yield Path(directory), lab, loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating warm runs per server (0: cold only)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--dnssec-ok", action="store_true", help="warm queries with DO=1 (signed answers)")
    parser.add_argument("--cold-passes", type=int, default=3, help="cold passes, each on freshly started servers")
    args = parser.parse_args()
    resolving = [(c.qname, c.qtype) for c in CASES if c.rcode != "SERVFAIL"]
    servers = {"ztdns": ZTDNS, "unbound": UNBOUND}
    passes: dict[str, list[list[float]]] = {name: [] for name in servers}
    warm: dict[str, list[float]] = {name: [] for name in servers}
    with lab_and_client() as (directory, lab, loop):
        query_file = directory / "queries.txt"
        query_file.write_text("".join(f"{qname} {qtype}\n" for qname, qtype in resolving))
        for _ in range(args.cold_passes):
            with servers_running(lab):
                for name, address in servers.items():
                    passes[name].append(loop.run(cold_latencies(address)))
        if args.rounds:
            with servers_running(lab):
                for address in servers.values():
                    loop.run(prime(address, resolving, args.dnssec_ok))
                for _ in range(args.rounds):
                    for name, address in servers.items():
                        warm[name].append(dnsperf(lab, address, query_file, args.seconds, args.clients, args.dnssec_ok))
    # Per case, the median over the passes: one pass is 29 single queries, easily disturbed by other load.
    cold = {name: [statistics.median(times) for times in zip(*runs, strict=True)] for name, runs in passes.items()}
    print(f"{f'cold latency (ms), median of {args.cold_passes} passes':<40} {'ztdns':>8} {'unbound':>8} {'ratio':>6}")
    for case, ours, theirs in zip(CASES, cold["ztdns"], cold["unbound"], strict=True):
        print(f"{case.qname + ' ' + case.qtype:<40} {ours:8.2f} {theirs:8.2f} {ours / theirs:6.2f}")
    ours_mean, theirs_mean = statistics.mean(cold["ztdns"]), statistics.mean(cold["unbound"])
    print(
        f"cold mean latency per lab case: ztdns {ours_mean:.2f} ms, unbound {theirs_mean:.2f} ms, "
        f"ratio {ours_mean / theirs_mean:.2f}x (target <= 2)"
    )
    ratios = [ours / theirs for ours, theirs in zip(cold["ztdns"], cold["unbound"], strict=True)]
    print(f"cold median of per-case ratios: {statistics.median(ratios):.2f}x (target <= 1.6, issue 16)")
    if args.rounds:
        print_warm(warm, args)
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def print_warm(warm: dict[str, list[float]], args: argparse.Namespace) -> None:
    ours_qps, theirs_qps = statistics.median(warm["ztdns"]), statistics.median(warm["unbound"])
    print(
        f"warm qps ({args.clients} clients, {args.rounds}x{args.seconds} s, DO={int(args.dnssec_ok)}, median): "
        f"ztdns {ours_qps:.0f}, unbound {theirs_qps:.0f}, ratio {ours_qps / theirs_qps:.2f} (target >= 0.9, issue 16)"
    )
    print(f"  runs: ztdns {[round(q) for q in warm['ztdns']]}, unbound {[round(q) for q in warm['unbound']]}")


if __name__ == "__main__":
    main()
