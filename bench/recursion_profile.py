"""Cold-cache recursion in-process: the recursive, validating resolver (no server around it) against the lab,
each lab case in order on a fresh resolver, as ``bench/recursion.py`` asks them. Prints milliseconds and
upstream queries per case; ``--profile`` writes a cProfile of the cold passes for ``pstats``/``snakeviz``.

Runs on the main thread inside the lab's namespace so that cProfile sees the resolver's code.

    .venv/bin/python bench/recursion_profile.py [--passes 5] [--profile /tmp/cold.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import tempfile
import time
from pathlib import Path

import dns.name
import dns.rdatatype

from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec import denial, names, validator
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.lab import netns
from ztdns.lab.run import Lab
from ztdns.lab.zones import CASES
from ztdns.model import Question
from ztdns.resolver.recursive import RecursiveResolver
from ztdns.wire import encode, parse


def forget_process_memos() -> None:
    """What a freshly started server does not have yet: verified signatures, parsed names and records, names'
    wire forms and NSEC3 hashes are remembered process-wide, and later passes would otherwise find them."""
    validator._keys = validator._KeyCache()
    parse._memo = parse._Memo()
    encode._forms.clear()
    denial._nsec3_hashes.clear()
    names._canonical.clear()


def fresh_resolver(lab: Lab) -> RecursiveResolver:
    forget_process_memos()
    config = RecursionConfig(root_hints=str(lab.root_hints), allow_query_localhost=True, query_port=lab.port)
    resolver = RecursiveResolver(config)
    resolver.validator = Validator(resolver, TrustAnchors.load(texts=(), files=[lab.trust_anchor]))
    return resolver


async def cold_pass(lab: Lab) -> list[tuple[float, float, int]]:
    """(milliseconds, CPU milliseconds, upstream queries) per lab case on a resolver that has seen nothing
    before. CPU time is this thread's: the resolver's own work, steady while other processes load the machine."""
    resolver = fresh_resolver(lab)
    results = []
    for case in CASES:
        question = Question(dns.name.from_text(case.qname), dns.rdatatype.from_text(case.qtype), 1, True, False)
        before = resolver.upstream_queries
        start, cpu = time.perf_counter(), time.thread_time()
        await resolver.resolve(question)
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
        results.append((elapsed * 1000, cpu * 1000, resolver.upstream_queries - before))
    await resolver.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=5, help="cold passes, each on a fresh resolver")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the passes after the first here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, Lab(Path(directory), netns_name="auto") as lab:
        assert lab.netns is not None
        netns.enter(lab.netns)
        passes = [asyncio.run(cold_pass(lab))]  # the first pass also pays for first use of code paths
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        for _ in range(args.passes - 1):
            gc.collect()  # each pass starts with what the last one left collected, like a fresh server
            passes.append(asyncio.run(cold_pass(lab)))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    later = passes[1:] or passes
    print(f"{'cold, in-process (ms)':<36} {'first':>7} {'median':>7} {'cpu':>7} {'queries':>7}")
    for index, case in enumerate(CASES):
        first = passes[0][index][0]
        wall = statistics.median(p[index][0] for p in later)
        cpu = statistics.median(p[index][1] for p in later)
        print(f"{case.qname + ' ' + case.qtype:<36} {first:7.2f} {wall:7.2f} {cpu:7.2f} {passes[-1][index][2]:7d}")
    cpu_totals = [sum(cpu for _, cpu, _ in p) for p in passes]
    later_cpu = statistics.median(cpu_totals[1:] or cpu_totals)
    print(f"CPU per pass (ms): first {cpu_totals[0]:.1f}, later median {later_cpu:.1f}")


if __name__ == "__main__":
    main()
