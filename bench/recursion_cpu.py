"""CPU per cold pass of the real ``ztdns serve`` against the lab, alternating source trees (A/B), with Unbound's as
a reference: the figure that stays meaningful on a machine shared with other work, where latencies do not.

Each round starts a fresh server per tree (and a fresh Unbound), waits until it is idle, asks every lab case
once in order as ``bench/recursion.py``'s cold pass does, waits until it is idle again and takes the CPU time
it used meanwhile — every thread, from ``/proc/PID/task/*/schedstat`` (nanoseconds; ``/proc/PID/stat`` counts
10 ms ticks, too coarse for a 30 ms pass). ``--tree`` names another checkout's ``src`` to run instead of this
one's (``PYTHONPATH``; compiled modules must be built there too), e.g. an untouched ``main``:

    git worktree add --detach /tmp/base main   # and copy src/ztdns/**/*.so into it
    .venv/bin/python bench/recursion_cpu.py --rounds 10 --tree base=/tmp/base/src
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from pathlib import Path

from dnsperf_run import can_pin, pin_process
from recursion import UNBOUND, ZTDNS, cold_latencies, lab_and_client, settle
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.serve import LabServer
from ztdns.lab.unbound import Unbound

THIS_TREE = str(Path(__file__).resolve().parent.parent / "src")


def cpu_ns(pid: int) -> int:
    """Time on a CPU of every thread the process has now, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def cold_pass_cpu(loop: NetnsLoop, pid: int, address: str) -> float:
    """Milliseconds of CPU the process at ``pid`` spends answering one cold pass."""
    settle(pid)
    before = cpu_ns(pid)
    loop.run(cold_latencies(address, quiet=True))
    settle(pid)
    return (cpu_ns(pid) - before) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6, help="fresh servers per tree, alternating")
    parser.add_argument(
        "--tree", action="append", default=[], metavar="NAME=SRC", help="another source tree to compare (repeatable)"
    )
    args = parser.parse_args()
    trees = {"this": THIS_TREE} | dict(item.split("=", 1) for item in args.tree)
    results: dict[str, list[float]] = {name: [] for name in [*trees, "unbound"]}
    with lab_and_client() as (_, lab, loop):
        for _ in range(args.rounds):
            for name, tree in trees.items():
                os.environ["PYTHONPATH"] = tree
                with LabServer(lab, address=ZTDNS) as server:
                    if can_pin():
                        pin_process(server.pid)
                    results[name].append(cold_pass_cpu(loop, server.pid, ZTDNS))
            with Unbound(lab, address=UNBOUND) as unbound:
                if can_pin():
                    pin_process(unbound.pid)
                results["unbound"].append(cold_pass_cpu(loop, unbound.pid, UNBOUND))
            print("  ".join(f"{name} {runs[-1]:6.1f}" for name, runs in results.items()), flush=True)
    print(f"{'CPU per cold pass (ms)':<24} {'median':>7} {'min':>7}  runs")
    for name, runs in results.items():
        print(f"{name:<24} {statistics.median(runs):7.1f} {min(runs):7.1f}  {' '.join(f'{r:.1f}' for r in runs)}")
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
