"""Soak `ztdns serve` with hostile-client churn and watch its memory and descriptors.

Mixed traffic for ``--duration`` seconds against one server (UDP, TCP and DoT listeners, forwarding to a slow
upstream that answers after 0.3 s):

- TLS handshakes: ``--concurrency`` DoT clients, each connecting, asking a cached name, reading the answer and
  closing, over and over (the bulk: ~170/s gives 100,000 in 10 minutes);
- disconnects during misses: DoT and TCP clients asking a name that is not cached and leaving at once, while
  the upstream query is pending (the upstream socket leak of issue 12);
- resets: TCP connections aborted with SO_LINGER 0 before the server handles them.

Every ``--interval`` seconds it prints the counts and the server's RSS and open fds. At the end it stops the
load, lets the server settle, and checks: RSS after the warm-up (the first ``--warmup`` seconds) within
``--max-growth`` percent at the end, and open fds back to where they were before the load. Exit status 1 when a
check fails.

    .venv/bin/python bench/soak.py --duration 600            # the 10-minute soak of docs/benchmarks.md
    .venv/bin/python bench/soak.py --duration 30 --warmup 10  # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.hostile import (
    SlowUpstream,
    client_context,
    dot_listener,
    open_fds,
    pid_of,
    rss_mb,
    server_config,
    settle_fds,
)
from fixtures.server import ServerProcess
from fixtures.unbound import free_port


def framed(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!H", len(wire)) + wire


@dataclass
class Counts:
    handshakes: int = 0
    misses_left: int = 0
    resets: int = 0
    errors: int = 0


async def handshaker(port: int, context: ssl.SSLContext, counts: Counts, stop: asyncio.Event) -> None:
    query = framed("cached.soak.test")
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
            writer.write(query)
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            await reader.readexactly(length)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            counts.handshakes += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            counts.errors += 1
            await asyncio.sleep(0.05)


async def leaver(
    dot_port: int, tcp_port: int, context: ssl.SSLContext, names: int, counts: Counts, stop: asyncio.Event
) -> None:
    """Ask for a name and leave at once, on DoT and TCP in turn: a cache miss every time (the upstream takes
    0.3 s, so the query is cancelled before its answer could be cached), over NAMES names in turn, so that the
    server's bounded per-name memos (8,192 parsed names) are full after the warm-up."""
    index = 0
    while not stop.is_set():
        index += 1
        name = f"miss{index % names}.soak.test"
        try:
            if index % 2:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", dot_port, ssl=context, server_hostname="localhost"
                )
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            writer.write(framed(name))
            await writer.drain()
            writer.transport.abort()
            counts.misses_left += 1
        except (OSError, ssl.SSLError):
            counts.errors += 1
        await asyncio.sleep(0.02)


def reset_once(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.connect(("127.0.0.1", port))
    sock.close()


async def resetter(port: int, counts: Counts, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.to_thread(reset_once, port)  # a blocking connect must not stall the other clients
        counts.resets += 1
        await asyncio.sleep(0.01)


async def soak(args: argparse.Namespace, server: ServerProcess, dot_port: int, directory: Path) -> bool:
    pid = pid_of(server)
    context = client_context(directory)
    # Warm the answer the handshakers ask for, then take the baseline.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as warm:
        warm.sendall(framed("cached.soak.test"))
        warm.recv(2)
    await asyncio.sleep(0.5)
    fds_before = open_fds(pid)
    counts = Counts()
    stop = asyncio.Event()
    mix = set(args.mix.split(","))
    tasks = []
    if "handshakes" in mix:
        tasks += [asyncio.create_task(handshaker(dot_port, context, counts, stop)) for _ in range(args.concurrency)]
    if "leavers" in mix:
        tasks.append(asyncio.create_task(leaver(dot_port, server.port, context, args.names, counts, stop)))
    if "resets" in mix:
        tasks.append(asyncio.create_task(resetter(server.port, counts, stop)))
    started = time.monotonic()
    warm_rss = 0.0
    print(f"{'seconds':>7} {'handshakes':>10} {'left':>7} {'resets':>7} {'errors':>6} {'RSS MB':>7} {'fds':>5}")
    while (elapsed := time.monotonic() - started) < args.duration:
        await asyncio.sleep(min(args.interval, args.duration - elapsed))
        elapsed = time.monotonic() - started
        rss, fds = rss_mb(pid), open_fds(pid)
        if not warm_rss and elapsed >= args.warmup:
            warm_rss = rss
        print(
            f"{elapsed:7.0f} {counts.handshakes:10d} {counts.misses_left:7d} {counts.resets:7d} {counts.errors:6d} "
            f"{rss:7.1f} {fds:5d}",
            flush=True,
        )
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    fds_after = settle_fds(pid, fds_before, timeout=10)
    final_rss = rss_mb(pid)
    warm_rss = warm_rss or final_rss
    growth = (final_rss - warm_rss) / warm_rss * 100
    rate = counts.handshakes / args.duration
    print(
        f"{counts.handshakes} TLS handshakes ({rate:.0f}/s), {counts.misses_left} clients left during a miss, "
        f"{counts.resets} resets, {counts.errors} client errors in {args.duration:.0f} s"
    )
    print(f"RSS {warm_rss:.1f} MB after {args.warmup:.0f} s warm-up, {final_rss:.1f} MB at the end ({growth:+.1f} %)")
    print(f"open fds {fds_before} before, {fds_after} after")
    return abs(growth) <= args.max_growth and fds_after <= fds_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=20, help="DoT clients handshaking in a loop")
    parser.add_argument("--mix", default="handshakes,leavers,resets", help="which clients run (comma-separated)")
    parser.add_argument("--names", type=int, default=500, help="distinct names the leaving clients ask")
    parser.add_argument("--cache-entries", type=int, default=1000, help="the server's cache.max_entries")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent RSS change allowed after warm-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ztdns-soak-") as tmp, SlowUpstream(delay=0.3) as upstream:
        directory = Path(tmp)
        port, dot_port = free_port(), free_port()
        # Every client leaving during a miss adds a cache entry: a small cache fills during the warm-up, so that
        # RSS after it measures leaks, not the cache filling up to its 100,000-entry default.
        cache = f"[cache]\nmax_entries = {args.cache_entries}\n"
        text = server_config(port, upstream.address, listeners=dot_listener(directory, dot_port), extra=cache)
        with ServerProcess(text, directory, port=port) as server:
            ok = asyncio.run(soak(args, server, dot_port, directory))
            if "Traceback" in server.stderr:
                print(server.stderr[-3000:])
                ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
