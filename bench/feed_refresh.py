"""Does a list refresh block answering? Query latency (p50/p99/max) on the event loop, idle, while a new copy
of a big list feed is compiled and swapped in (``Frontend.reload``, what a feed refresh does), and just after
(while the replaced table is freed).

    .venv/bin/python bench/feed_refresh.py [--names N] [--rate QPS] [--seconds S] [--after S]
                                           [--runs R] [--mode apart|thread|both]

Queries go through the real pipeline (``Frontend.handle``) for a mix of listed (blocked) and other names, at a
fixed rate, each timed from when it was due. ``--mode apart`` (what ``ztdns serve`` does) compiles the lists in
a child process, which writes the tables into a file this process maps (``ztdns.policy.apart``); ``thread``
compiles them in the reload's thread (before issue 21's fix), where what remains is the GIL it holds between
switches; ``both`` alternates the two, run after run. Each run measures idle, during and after in turn, so a
shared machine's load moves all three alike: compare the ratio during/idle of p99, whose median over the runs is
printed last, and the serving process's CPU during the refresh beyond what answering takes (the child's apart).

Before measuring, the server is set up as ``ztdns serve`` sets it (the DGA model read, the collector settled)
and warmed up for a second: a first query that reads the model (~12 ms) used to stall the idle window.
Garbage collections are reported per generation with their longest pause (``gc.callbacks``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import dns.message

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.daemon import settle_garbage_collector
from ztdns.handler import Frontend
from ztdns.policy.sources import copy_path

URL = "https://feed.example/list.txt"


class Collections:
    """The garbage collector's pauses (any thread), per generation, to tell them from the compile's own."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int]] = []
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._started, info["generation"]))

    def take(self) -> str:
        pauses, self.pauses = self.pauses, []
        if not pauses:
            return "no collection"
        return ", ".join(
            f"gen{generation} {len(times)}x ≤{max(times) * 1e3:.1f} ms"
            for generation in range(3)
            if (times := [pause for pause, of in pauses if of == generation])
        )


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def summary(samples: list[float], collections: Collections) -> str:
    ordered = sorted(samples)
    return (
        f"{len(samples)} queries, p50 {statistics.median(ordered) * 1e3:.2f} ms, p99 {p99(samples) * 1e3:.2f} ms, "
        f"max {ordered[-1] * 1e3:.2f} ms; gc: {collections.take()}"
    )


async def measure(
    frontend: Frontend, wires: list[bytes], rate: float, until: asyncio.Future[None] | float
) -> list[float]:
    """Latency of each query from the time it was due (a fixed schedule), not from when the loop got round to
    sending it: a loop held up by the compile would otherwise send fewer queries and hide the wait (coordinated
    omission)."""
    client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
    samples: list[float] = []
    interval = 1.0 / rate
    index = 0
    started = time.perf_counter()
    while True:
        if isinstance(until, float):
            if time.perf_counter() - started >= until:
                return samples
        elif until.done():
            return samples
        due = started + index * interval
        await frontend.handle(wires[index % len(wires)], client)
        samples.append(time.perf_counter() - due)
        index += 1
        await asyncio.sleep(max(0.0, started + index * interval - time.perf_counter()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="of the idle measurement")
    parser.add_argument("--after", type=float, default=2.0, help="seconds measured after the refresh")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--mode", choices=("apart", "thread", "both"), default="apart")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ztdns-feed-bench-") as tmp:
        directory = Path(tmp)
        copy = copy_path(directory / "state" / "lists", URL)
        copy.parent.mkdir(parents=True)
        copy.write_text("".join(f"ads{i}.example\n" for i in range(args.names)))
        config = parse_config(
            '[server]\nstate_dir = "state"\n[resolver]\nmode = "none"\n[log.query_log]\noutput = "off"\n'
            '[identities.lo]\nnetworks = ["127.0.0.0/8"]\npolicies = ["p"]\n'
            f'[policies.p]\nallow = ["**"]\ndeny_lists = ["{URL}"]\n',
            "bench.toml",
            directory,
        )
        frontend = Frontend(config)
        frontend.detector.preload()  # as `ztdns serve` does (daemon.py)
        settle_garbage_collector()
        collections = Collections()
        names = (f"ads{i * 7919 % args.names}.example" if i % 2 else f"www.site{i}.example" for i in range(5000))
        wires = [dns.message.make_query(name, "A").to_wire() for name in names]
        await measure(frontend, wires, args.rate, 1.0)  # warm-up, not counted
        collections.take()
        modes = ("apart", "thread") if args.mode == "both" else (args.mode,)
        ratios: dict[str, list[float]] = {mode: [] for mode in modes}
        for run in range(args.runs):
            mode = modes[run % len(modes)]
            frontend.compile_apart = mode == "apart"
            cpu = time.process_time()
            idle = await measure(frontend, wires, args.rate, args.seconds)
            answering = (time.process_time() - cpu) / args.seconds  # CPU seconds per second, idle
            print(f"run {run + 1} ({mode})")
            print(f"  idle:            {summary(idle, collections)}")
            started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
            reload = asyncio.ensure_future(frontend.reload(config))
            during = await measure(frontend, wires, args.rate, reload)
            await reload
            took, cpu, children = time.perf_counter() - started, time.process_time() - cpu, _children_cpu() - children
            print(f"  during refresh:  {summary(during, collections)} (the refresh took {took:.2f} s)")
            print(
                f"  this process's CPU during the refresh: {cpu:.2f} s, {cpu - answering * took:.2f} s more than "
                f"answering alone ({answering * 1e3:.0f} ms/s idle); the child's: {children:.2f} s"
            )
            after = await measure(frontend, wires, args.rate, args.after)
            print(f"  after refresh:   {summary(after, collections)}")
            ratios[mode].append(p99(during) / p99(idle))
        for mode, values in ratios.items():
            shown = " ".join(f"{value:.2f}" for value in values)
            median = statistics.median(values)
            print(f"{mode}: p99 during / p99 idle, median of {len(values)} runs: {median:.2f} ({shown})")
        await frontend.close()


if __name__ == "__main__":
    asyncio.run(main())
