"""Running dnsperf and reading its report: shared by the bench scripts (``python bench/X.py``).

Every dnsperf run goes through :func:`dnsperf_command` (which pins dnsperf to the load CPU) and :func:`measure`
(which pins the server under test to the other CPU, every thread of it, and reads the server's CPU time from
``/proc/PID/stat`` around the run). :func:`compare_grid` runs a grid of load shapes (dnsperf ``-c`` clients × ``-q``
outstanding), alternating the servers ``rounds`` times per shape, and reports the **worst** ratio over the grid as
well as the best: one flattering shape is not a result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import resource
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Pinning: dnsperf on CPU 0, the server under test on CPU 1 (every thread of it). Each server then has a core to
# itself, and no round depends on where the scheduler happened to put a thread.
LOAD_CPU, SERVER_CPU = 0, 1
# dnsperf clients (-c) × outstanding queries (-q): few and many connections, shallow and deep queues.
GRID: tuple[tuple[int, int], ...] = tuple((c, q) for c in (1, 4, 16) for q in (64, 256, 1024))
_TICKS = os.sysconf("SC_CLK_TCK")
REALTIME_PRIORITY = 10  # SCHED_FIFO priority of dnsperf and the server with ``realtime`` (above every normal task)


def can_pin() -> bool:
    return (os.cpu_count() or 1) > SERVER_CPU


def pin_process(pid: int) -> None:
    """Every thread of ``pid`` onto the server CPU (again before each run: threads may start late)."""
    if not can_pin():
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {SERVER_CPU})
        except (ProcessLookupError, FileNotFoundError):  # a thread that just ended
            continue


def pinned(command: Sequence[str]) -> list[str]:
    """``command`` run on the load CPU (unchanged on a one-CPU machine)."""
    return ["taskset", "-c", str(LOAD_CPU), *command] if can_pin() else list(command)


def parse_grid(text: str) -> tuple[tuple[int, int], ...]:
    """``"1x64,4x256"`` → ((1, 64), (4, 256)); ``"full"`` is :data:`GRID`."""
    if text == "full":
        return GRID
    shapes = []
    for item in text.split(","):
        clients, _, outstanding = item.partition("x")
        shapes.append((int(clients), int(outstanding)))
    return tuple(shapes)


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's children that have ended (dnsperf runs one at a time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads), from ``/proc/PID/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces; fields start at 3 (state)
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of proc(5)


@dataclass(frozen=True)
class DnsperfResult:
    qps: float
    lost_percent: float
    latency_ms: float  # average
    completed: int = 0
    cpu_us_per_query: float = 0.0  # the server's, when run through `measure`
    # dnsperf's own (user + system, all its threads): near the server's, on a core of its own, the load generator
    # and not the server sets the rate. With queries lost it includes dnsperf's busy wait for them (-t) at the end.
    client_cpu_us_per_query: float = 0.0

    def line(self) -> str:
        return (
            f"{self.qps:9.0f} q/s  lost {self.lost_percent:5.2f}%  latency {self.latency_ms:6.3f} ms  "
            f"cpu {self.cpu_us_per_query:5.2f} µs/q  dnsperf {self.client_cpu_us_per_query:5.2f} µs/q"
            + (" (with its wait for the lost)" if self.lost_percent else "")
        )


def dnsperf_command(
    server: str,
    port: int | None,
    datafile: Path,
    *,
    seconds: float | None,
    clients: int,
    mode: str = "udp",
    outstanding: int = 256,
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
    pin: bool = True,
) -> list[str]:
    """The dnsperf command, pinned to the load CPU unless ``pin`` is false.

    ``prefix`` runs dnsperf inside something (``ip netns exec NAME``); ``seconds=None`` runs the file once.
    """
    command = [*prefix, "dnsperf", "-m", mode, "-s", server, "-d", str(datafile), "-c", str(clients)]
    command += ["-q", str(outstanding), "-t", "2"]
    if port is not None:
        command += ["-p", str(port)]
    command += ["-l", str(seconds)] if seconds is not None else ["-n", "1"]
    command += extra
    return pinned(command) if pin else command


def shaped(
    port: int, datafile: Path, seconds: float, *, mode: str = "udp", extra: Sequence[str] = (), pin: bool = True
) -> Callable[[int, int], list[str]]:
    """The dnsperf command against 127.0.0.1:``port`` for a load shape (clients, outstanding)."""

    def command(clients: int, outstanding: int) -> list[str]:
        return dnsperf_command(
            "127.0.0.1",
            port,
            datafile,
            seconds=seconds,
            clients=clients,
            mode=mode,
            outstanding=outstanding,
            extra=extra,
            pin=pin,
        )

    return command


def parse_report(output: str) -> DnsperfResult:
    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        if match is None:
            raise RuntimeError(f"dnsperf printed no {pattern!r}:\n{output}")
        return float(match.group(1))

    return DnsperfResult(
        qps=number(r"Queries per second:\s+([\d.]+)"),
        lost_percent=number(r"Queries lost:\s+\d+ \(([\d.]+)%\)"),
        latency_ms=number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        completed=int(number(r"Queries completed:\s+(\d+)")),
    )


def run_dnsperf(command: Sequence[str]) -> DnsperfResult:
    return parse_report(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


async def run_dnsperf_async(command: Sequence[str], attempts: int = 3) -> DnsperfResult:
    """Run dnsperf; a run killed by a signal is repeated (dnsperf 2.10 sometimes crashes in DoH mode, SIGSEGV)."""
    for attempt in range(attempts):
        before = children_cpu_seconds()
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        if process.returncode == 0:
            result = parse_report(out.decode(errors="replace"))
            spent = children_cpu_seconds() - before  # dnsperf's: the only child that ended meanwhile
            per_query = spent / result.completed * 1e6 if result.completed else 0.0
            return dataclasses.replace(result, client_cpu_us_per_query=per_query)
        if process.returncode is None or process.returncode > 0 or attempt == attempts - 1:
            break
        print(f"  (dnsperf died of signal {-process.returncode}; run again)", flush=True)
    raise RuntimeError(f"dnsperf failed ({process.returncode}): {err.decode(errors='replace')}")


async def settle(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process is idle (under 5 % of a CPU over 0.2 s): work queued during a run — query log lines
    a writer thread has not formatted yet — belongs to that run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.2)
        if cpu_seconds(pid) - before < 0.01:
            return


def set_realtime(pid: int, on: bool) -> None:
    """Every thread of ``pid`` to SCHED_FIFO (``on``) or back to the normal policy (``chrt``; needs root)."""
    policy = ["-f", "-a", "-p", str(REALTIME_PRIORITY)] if on else ["-o", "-a", "-p", "0"]
    subprocess.run(["chrt", *policy, str(pid)], check=True, stdout=subprocess.DEVNULL)


async def measure(command: Sequence[str], server_pid: int, pin: bool = True, realtime: bool = False) -> DnsperfResult:
    """Run dnsperf against the server ``server_pid`` (pinned first) and add its CPU time per answered query:
    from the start of the run until the server is idle again. ``realtime``: dnsperf and the server run at
    SCHED_FIFO for the run (see :func:`compare_grid`)."""
    if pin:
        pin_process(server_pid)
    await settle(server_pid)
    before = cpu_seconds(server_pid)
    if realtime:
        set_realtime(server_pid, True)
        command = ["chrt", "-f", str(REALTIME_PRIORITY), *command]
    try:
        result = await run_dnsperf_async(command)
    finally:
        if realtime:
            set_realtime(server_pid, False)
    await settle(server_pid)
    spent = cpu_seconds(server_pid) - before
    per_query = spent / result.completed * 1e6 if result.completed else 0.0
    return dataclasses.replace(result, cpu_us_per_query=per_query)


@dataclass(frozen=True)
class Contender:
    """One server in a comparison: its name, its process and how to build dnsperf's command for a load shape."""

    label: str
    pid: int
    command: Callable[[int, int], list[str]]  # (clients, outstanding) → dnsperf command


@dataclass(frozen=True)
class ShapeResult:
    clients: int
    outstanding: int
    runs: dict[str, list[DnsperfResult]]

    def median_qps(self, label: str) -> float:
        return statistics.median(run.qps for run in self.runs[label])

    def ratio(self, label: str, reference: str) -> float:
        return self.median_qps(label) / self.median_qps(reference)

    def median_cpu(self, label: str) -> float:
        return statistics.median(run.cpu_us_per_query for run in self.runs[label])


async def compare_grid(
    title: str,
    contenders: Sequence[Contender],
    grid: Sequence[tuple[int, int]],
    rounds: int,
    *,
    pin: bool = True,
    report: Callable[[str], None] = print,
    realtime: bool = False,
) -> list[ShapeResult]:
    """Alternate every contender ``rounds`` times per load shape; print each shape and then a summary.

    ``realtime`` (root, with ``pin``): dnsperf and the server under test run at SCHED_FIFO during each run, so
    the other work of a shared machine does not take their two cores meanwhile (the kernel's real-time
    throttling still leaves it 5 % of each). It stalls everything else on the machine for the runs' duration.

    The last contender is the reference (Unbound): each other contender's ratio is its median rate over the
    reference's, per shape; the summary gives the worst and the best shape and the median CPU per query.
    """
    results: list[ShapeResult] = []
    reference = contenders[-1].label
    for clients, outstanding in grid:
        runs: dict[str, list[DnsperfResult]] = {c.label: [] for c in contenders}
        for _ in range(rounds):
            for contender in contenders:
                result = await measure(contender.command(clients, outstanding), contender.pid, pin, realtime)
                runs[contender.label].append(result)
                report(f"  {title} -c {clients:2d} -q {outstanding:4d}  {contender.label:14s} {result.line()}")
        results.append(ShapeResult(clients, outstanding, runs))
    report(summary(title, contenders, results, reference))
    return results


def summary(title: str, contenders: Sequence[Contender], results: Sequence[ShapeResult], reference: str) -> str:
    lines = [f"{title}: medians per load shape (ratio = / {reference})"]
    width = max(len(c.label) for c in contenders) + 2
    others = [c.label for c in contenders if c.label != reference]
    header = f"  {'shape':14s}" + "".join(f"{c.label:>{width}s} {'µs/q':>6s}" for c in contenders)
    lines.append(header + "".join(f"  {'ratio ' + label:>{width + 6}s}" for label in others))
    for shape in results:
        row = f"  -c {shape.clients:2d} -q {shape.outstanding:4d}"
        row += "".join(f"{shape.median_qps(c.label):{width}.0f} {shape.median_cpu(c.label):6.2f}" for c in contenders)
        lines.append(row + "".join(f"  {shape.ratio(label, reference):{width + 6}.2f}" for label in others))
    for label in others:
        ratios = [(s.ratio(label, reference), s) for s in results]
        worst, best = min(ratios, key=lambda r: r[0]), max(ratios, key=lambda r: r[0])
        cpu = statistics.median(s.median_cpu(label) for s in results)
        reference_cpu = statistics.median(s.median_cpu(reference) for s in results)
        client = statistics.median(run.client_cpu_us_per_query for run in worst[1].runs[label])
        reference_client = statistics.median(run.client_cpu_us_per_query for run in worst[1].runs[reference])
        lines.append(
            f"  {title} {label}: WORST ratio {worst[0]:.2f} (-c {worst[1].clients} -q {worst[1].outstanding}; "
            f"dnsperf's own CPU there {client:.2f} µs/q, {reference_client:.2f} against {reference}), "
            f"best {best[0]:.2f} (-c {best[1].clients} -q {best[1].outstanding}); "
            f"CPU per query {cpu:.2f} µs vs {reference} {reference_cpu:.2f} µs"
        )
    return "\n".join(lines)
