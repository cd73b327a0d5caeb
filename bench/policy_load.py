"""Policy load benchmark: a list of N generated names (default 1,000,000) — load time, RSS added, lookup rate.

    .venv/bin/python bench/policy_load.py [--names N] [--format plain|hosts|adblock] [--lookups N] [--no-peer]
                                          [--feeds K] [--apart]

Targets (issue 2): ≤ 3 s and ≤ 150 MB RSS for 1,000,000 names. With ``--feeds K`` the names are split over K
list feeds (their last good copies in the state directory, as ``ztdns`` keeps them; issue 21: 2,000,000 names
from 5 feeds ≤ 3 s and ≤ 300 MB). The CPU time is printed beside the wall time: on a shared machine it is
the steadier figure. RSS is read from /proc/self/statm (no
psutil); the peak is VmHWM after resetting it through /proc/self/clear_refs. The peer is Unbound loading the
same names as ``local-zone: NAME always_nxdomain``: the time until it answers, and its RSS then.

``--apart`` compiles as a reload of big lists does (``compile_views_apart``): in a child process that writes the
tables into a file this process maps; the child's CPU time is printed beside this process's, and RSS once more
after the lookups (they fault in the mapped pages they touch).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from ztdns.config import parse_config
from ztdns.policy import compile_views, compile_views_apart
from ztdns.policy.sources import copy_path

PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_SECONDS = 3.0
TARGET_MB = 150.0
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TLDS = ["com", "net", "org", "io", "info", "xyz", "de", "co.uk", "example"]
_LINE = {"plain": "{}\n", "hosts": "0.0.0.0 {}\n", "adblock": "||{}^\n"}


def generated_names(count: int, seed: int) -> Iterator[str]:
    """Blocklist-like names: a random word made unique by a counter, half with a subdomain, ~22 characters."""
    rng = random.Random(seed)
    for index in range(count):
        word = "".join(rng.choices(_ALPHABET, k=rng.randint(5, 12)))
        sub = "".join(rng.choices(_ALPHABET, k=rng.randint(2, 8))) + "." if rng.random() < 0.5 else ""
        yield f"{sub}{word}{index:x}.{rng.choice(_TLDS)}"


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 1e6


def peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def rate(decide: Callable[[str, int], object], names: list[str]) -> float:
    """Decisions per second of CPU time (steadier than wall time on a shared machine), the best of 5 rounds."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for name in names:
            decide(name, 1)
        best = min(best, time.process_time() - started)
    return len(names) / best


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unbound_load(directory: Path, count: int, seed: int, probe: str) -> tuple[float, float] | None:
    """Seconds until Unbound with the names as local zones answers, and its RSS in MB; None without it."""
    binary = shutil.which("unbound")
    if binary is None:
        return None
    port = free_port()
    conf = directory / "unbound.conf"
    with conf.open("w") as out:
        out.write(
            f"server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  num-threads: 1\n"
            f'  username: ""\n  chroot: ""\n  directory: "{directory}"\n  pidfile: ""\n'
            '  use-syslog: no\n  logfile: ""\n'
        )
        for name in generated_names(count, seed):
            out.write(f'  local-zone: "{name}." always_nxdomain\n')
    query = dns.message.make_query(probe, dns.rdatatype.A)
    started = time.perf_counter()
    process = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while process.poll() is None:
            try:
                dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
                break
            except (TimeoutError, OSError, dns.exception.DNSException):
                continue
        if process.poll() is not None:
            errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
            print("unbound failed:", errors[-300:])
            return None
        seconds = time.perf_counter() - started
        with open(f"/proc/{process.pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024 / 1e6
        return seconds, rss
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--format", choices=sorted(_LINE), default="plain")
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip the Unbound comparison")
    parser.add_argument("--feeds", type=int, default=0, help="split the names over this many list feeds")
    parser.add_argument("--apart", action="store_true", help="compile in a child process, as a reload does")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ztdns-policy-bench-") as tmp:
        directory = Path(tmp)
        every = max(1, args.names // args.lookups)
        hits: list[str] = []
        sources = [f"https://feed{i}.example/list.txt" for i in range(args.feeds)] or ["list.txt"]
        paths = [copy_path(directory / "state" / "lists", url) for url in sources] if args.feeds else []
        paths = paths or [directory / "list.txt"]
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        outs = [path.open("w") for path in paths]
        line = _LINE[args.format]
        for index, name in enumerate(generated_names(args.names, args.seed)):
            outs[index % len(outs)].write(line.format(name))
            if index % every == 0:
                hits.append(name)
        for out in outs:
            out.close()
        misses = [f"www.{name.replace('.', '-')}.allowed.test" for name in hits]
        config = parse_config(
            '[server]\nstate_dir = "state"\n[identities.bench]\npolicies = ["bench"]\n'
            f'[policies.bench]\nallow = ["**"]\ndeny = ["ads.example"]\ndeny_lists = {sources!r}\n'.replace("'", '"'),
            "bench.toml",
            directory,
        )

        gc.collect()
        before = rss_mb()
        reset_peak()
        started, cpu_started, child_started = time.perf_counter(), time.process_time(), os.times().children_user
        view = (compile_views_apart(config, min_bytes=0) if args.apart else compile_views(config))["bench"]
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        child_cpu = os.times().children_user - child_started
        gc.collect()
        added = rss_mb() - before
        peak = peak_mb() - before
        assert not view.decide(hits[0], 1).allowed
        assert view.decide(misses[0], 1).allowed

        hit_rate = rate(view.decide, hits)
        miss_rate = rate(view.decide, misses)
        feeds = f", {args.feeds} feeds" if args.feeds else ""
        print(f"policy of {args.names:,} names ({args.format} list{feeds}{', compiled apart' if args.apart else ''})")
        ratio = seconds / TARGET_SECONDS
        child = f" (+ {child_cpu:.2f} s user in the child)" if args.apart else ""
        target = f"(target ≤ {TARGET_SECONDS} s, ratio {ratio:.2f})"
        print(f"ztdns load:   {seconds:.2f} s   {target}; {cpu:.2f} s of CPU{child}")
        print(f"ztdns RSS:    +{added:.1f} MB after load, +{peak:.1f} MB peak   (target ≤ {TARGET_MB:.0f} MB)")
        print(
            f"ztdns lookup: {hit_rate:,.0f} decisions/s of CPU for listed names ({1e9 / hit_rate:,.0f} ns), "
            f"{miss_rate:,.0f}/s others ({1e9 / miss_rate:,.0f} ns)"
        )
        print(f"ztdns RSS:    +{rss_mb() - before:.1f} MB after the lookups")
        del view
        gc.collect()
        peer = None if args.no_peer or args.feeds else unbound_load(directory, args.names, args.seed, hits[0])
        if peer is not None:
            peer_seconds, peer_rss = peer
            print(f"unbound load: {peer_seconds:.2f} s, RSS {peer_rss:.1f} MB (same names as local-zone)")
            print(f"ratio ztdns/unbound: load {seconds / peer_seconds:.2f}, memory {added / peer_rss:.2f}")


if __name__ == "__main__":
    main()
