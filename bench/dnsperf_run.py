"""Running dnsperf and reading its report: shared by the bench scripts (``python bench/X.py``)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Pinning: dnsperf on CPU 0, the server under test on CPU 1 (every thread of it). Each server then has a core to
# itself, and no round depends on where the scheduler happened to put a thread.
LOAD_CPU, SERVER_CPU = 0, 1


def can_pin() -> bool:
    return (os.cpu_count() or 1) > SERVER_CPU


def pin_process(pid: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {SERVER_CPU})


def pinned(command: Sequence[str]) -> list[str]:
    """``command`` run on the load CPU."""
    return ["taskset", "-c", str(LOAD_CPU), *command]


@dataclass(frozen=True)
class DnsperfResult:
    qps: float
    lost_percent: float
    latency_ms: float  # average


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
) -> list[str]:
    """``prefix`` runs dnsperf inside something (``ip netns exec NAME``); ``seconds=None`` runs the file once."""
    command = [*prefix, "dnsperf", "-m", mode, "-s", server, "-d", str(datafile), "-c", str(clients)]
    command += ["-q", str(outstanding), "-t", "2"]
    if port is not None:
        command += ["-p", str(port)]
    command += ["-l", str(seconds)] if seconds is not None else ["-n", "1"]
    return [*command, *extra]


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
    )


def run_dnsperf(command: Sequence[str]) -> DnsperfResult:
    return parse_report(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


async def run_dnsperf_async(command: Sequence[str]) -> DnsperfResult:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({process.returncode}): {err.decode(errors='replace')}")
    return parse_report(out.decode(errors="replace"))
