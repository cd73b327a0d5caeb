"""What each sink costs per replayed answer, in-process, no sockets for the queries: no sink,
the JSON query log (native), JSON in ECS and OCSF, pseudonymised (ipcrypt deterministic and ndx), aggregate,
dnstap (to a Frame Streams reader on a unix socket) and syslog (UDP to a local socket); the two collectors run in
a child process. The native log and dnstap run twice: with the ``_lines`` extension (``[c]``) and with the
pure-Python path (``[python]``, what ``ZTDNS_NATIVE_LINES=python`` chooses).

    .venv/bin/python bench/querylog.py [--queries 200000] [--rounds 3] [--cases "none,query log,dnstap"]
                                       [--rate 50000] [--path batch|fast] [--names 1000] [--clients 16]

The answers are replayed as the UDP lane replays them (``--path batch``: ``Frontend.fast_batch``, batches of 64
datagrams, the plain replays in C) or one at a time (``--path fast``: ``Frontend.fast``, as TCP, DoT and DoH do),
``--names`` names asked in turn by ``--clients`` clients (a server's mix: the records' objects are many, not one).

For each case, alternating rounds: ``serving`` is the CPU time of the thread that replays (time.thread_time:
what a sink adds there; the target is ≤ 0.5 µs), ``sinks`` that of the feed's and the sinks' threads,
``process`` the CPU time of the whole process until the sinks have written every event (serving thread, feed and
sink threads, the kernel's work for the writes: what the sink costs a server per query in all; the target for
the native log and dnstap is ≤ 0.6 µs added), ``wall`` the elapsed time per query while the sink's thread formats
and writes beside it (the GIL is shared, so this includes part of the sink's own work). Queues are deep enough
for the whole run, so nothing is dropped (a dropped record would cost nothing). The round with the least process
CPU of each is printed, and the difference from "none"; the last lines are the largest serving-thread cost of any
sink (and of the pure-Python paths, the fallback without the extension, apart) and the whole-process cost of the
native log and dnstap. ``--rate`` replays at that many queries a second
rather than as fast as one thread can (a server at that load: batches of its size, the records waiting for the
sinks as long). Run it on an idle machine: it measures one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import dns.message

from fastpath import CONFIG as FASTPATH_CONFIG  # the same zone, identity and policy
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.observe import formats

QUEUE = 4_000_000  # events a sink may hold: more than a run makes
BATCH = 64  # datagrams a UDP lane's batch holds at most (transport/_udpbatch.c)


def base_config(names: int) -> str:
    """The fast path's config with ``names`` names in its zone (n0.bench.test, …), deep queues, detection off."""
    records = "".join(f'"n{index}.bench.test. 300 IN A 192.0.2.1",\n' for index in range(names))
    zone = FASTPATH_CONFIG.replace("records = [", "records = [" + records)
    return zone + f"queue = {QUEUE}\n" + '\n[detect]\nmode = "off"\n'


PYTHON = " [python]"  # a case's name ending in this runs the sinks' pure-Python path


def sink(kind: str, **keys: str) -> str:
    text = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return "[[log.sinks]]\n" + f'type = "{kind}"\nqueue = {QUEUE}\n' + text


def cases(directory: Path, syslog_port: int, names: int) -> dict[str, str]:
    base = base_config(names)
    log = str(directory / "log")
    dnstap = base.format(query_log="off") + sink("dnstap", socket=str(directory / "dnstap.sock"))
    return {
        "none": base.format(query_log="off"),
        "query log (native) [c]": base.format(query_log=log + ".native"),
        "query log (native)" + PYTHON: base.format(query_log=log + ".python"),
        "json ecs": base.format(query_log="off") + sink("json", output=log + ".ecs", format="ecs"),
        "json ocsf": base.format(query_log="off") + sink("json", output=log + ".ocsf", format="ocsf"),
        "json ecs pseudonymised": base.format(query_log="off")
        + sink("json", output=log + ".pseudo", format="ecs", privacy="pseudonymised"),
        "json native ndx": base.format(query_log="off")
        + sink("json", output=log + ".ndx", privacy="pseudonymised", ipcrypt="ndx"),
        "json aggregate": base.format(query_log="off") + sink("json", output=log + ".agg", privacy="aggregate"),
        "dnstap (unix) [c]": dnstap,
        "dnstap (unix)" + PYTHON: dnstap,
        "syslog udp (ecs)": base.format(query_log="off")
        + sink("syslog", address=f"127.0.0.1:{syslog_port}", format="ecs"),
    }


def frame_streams_reader(server: socket.socket) -> None:
    """Accept dnstap connections on ``server``, answer the handshake, and discard the frames."""

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.recv(4096)  # READY
            body = struct.pack("!I", 1) + struct.pack("!II", 1, 22) + b"protobuf:dnstap.Dnstap"
            connection.sendall(struct.pack("!II", 0, len(body)) + body)  # ACCEPT
            while connection.recv(1 << 20):
                pass

    def accept() -> None:
        while True:
            connection, _ = server.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def udp_drain(sock: socket.socket) -> None:
    def drain() -> None:
        while True:
            sock.recv(65536)

    threading.Thread(target=drain, daemon=True).start()


def collectors(unix: socket.socket, udp: socket.socket) -> None:
    """The dnstap reader and the syslog drain, in a child process: in this one their threads would take the
    interpreter from the thread being measured (an artefact of the bench, not a cost of the sinks)."""
    frame_streams_reader(unix)
    udp_drain(udp)
    threading.Event().wait()


def start_collectors(directory: Path) -> tuple[multiprocessing.process.BaseProcess, int]:
    """Bind the collectors' sockets here, serve them from a forked child; the child and the syslog port."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(directory / "dnstap.sock"))
    unix.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    child = multiprocessing.get_context("fork").Process(target=collectors, args=(unix, udp), daemon=True)
    child.start()
    return child, int(udp.getsockname()[1])


def settled(frontend: Frontend, count: int, timeout: float = 30.0) -> None:
    """Wait until the sinks have written (or dropped) ``count`` events."""
    outputs = frontend.outputs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        feed = 0 if outputs.feed is None else outputs.feed.dropped
        if all(sink.written + sink.dropped + feed >= count for sink in outputs.sinks):
            return
        time.sleep(0.01)


def sink_threads_cpu() -> float:
    """CPU seconds of the feed's and the sinks' threads (``ztdns-*``) so far."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("ztdns-") and thread.ident is not None:
            with contextlib.suppress(OSError):  # ended meanwhile
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


Measured = tuple[float, float, float, float, int]  # serving, sinks, process, wall (µs per query), dropped


class Load:
    """The queries of a run: ``names`` names, each asked by ``clients`` clients in turn, replayed one at a time
    (``fast``) or in a lane's batches (``batch``)."""

    def __init__(self, path: str, names: int, clients: int) -> None:
        self.path = path
        self.wires = [
            dns.message.make_query(f"n{index}.bench.test", "A", use_edns=0).to_wire() for index in range(names)
        ]
        self.peers = {b"%d" % index: ClientInfo(Transport.UDP, "127.0.0.1", 40000 + index) for index in range(clients)}
        peers = list(self.peers)
        # Name after name, each from the next client: every batch holds many answers and clients.
        self.queries = [(wire, peers[index % len(peers)]) for index, wire in enumerate(self.wires * len(peers))]

    async def warm(self, frontend: Frontend) -> int:
        """Answer each name once through the pipeline (the replays are stored); the number of answers."""
        for wire in self.wires:
            await frontend.handle(wire, self.peers[b"0"])
            await asyncio.sleep(0)  # the replay is stored in the next loop turn
        return len(self.wires)

    def replay(self, frontend: Frontend, count: int) -> None:
        queries = self.queries
        if self.path == "fast":
            fast, peers = frontend.fast, self.peers
            for index in range(count):
                wire, peer = queries[index % len(queries)]
                if fast(wire, peers[peer]) is None:
                    raise RuntimeError("not replayed")
            return
        fast_batch, client_of = frontend.fast_batch, self.peers.__getitem__
        for done in range(0, count, BATCH):
            start = done % len(queries)
            batch = queries[start : start + min(BATCH, count - done)]
            answers: list[tuple[bytes, bytes]] = []
            if fast_batch(batch, client_of, answers):
                raise RuntimeError("not replayed")


def replay(frontend: Frontend, load: Load, count: int, rate: int) -> None:
    """``count`` replays; at ``rate`` a second (0: as fast as they go), in slices of a millisecond with sleeps
    between them, as a server at that rate answers: the sinks then get batches of that size, and the records wait
    for them as long as they would."""
    if not rate:
        load.replay(frontend, count)
        return
    per_slice = max(BATCH, rate // 1000 // BATCH * BATCH)
    started = time.monotonic()
    for done in range(0, count, per_slice):
        load.replay(frontend, min(per_slice, count - done))
        ahead = started + (done + per_slice) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


async def measure(config_text: str, directory: Path, count: int, rate: int, load: Load) -> Measured:
    frontend = Frontend(parse_config(config_text, "bench", directory))
    warm = await load.warm(frontend)
    settled(frontend, warm)
    sinks = sink_threads_cpu()
    wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
    replay(frontend, load, count, rate)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    settled(frontend, count + warm)
    process = time.process_time() - process
    sinks = sink_threads_cpu() - sinks
    dropped = sum(sink.dropped for sink in frontend.outputs.sinks)
    await frontend.close()
    return cpu / count * 1e6, sinks / count * 1e6, process / count * 1e6, wall / count * 1e6, dropped


async def main(count: int, rounds: int, chosen: list[str], rate: int, load: Load) -> None:
    # The collector settings of `ztdns serve` (daemon.py): with Python's defaults, the young generation is scanned
    # every 700 allocations, and each query's tuple and answer bytes wait in the feed until its thread takes them.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        child, syslog_port = start_collectors(directory)
        every = {
            name: text
            for name, text in cases(directory, syslog_port, len(load.wires)).items()
            if name == "none" or not chosen or any(part in name for part in chosen)
        }
        best: dict[str, Measured] = {}
        for _ in range(rounds):
            for name, text in every.items():  # alternating: each round measures every case once
                formats.NATIVE_LINES_IN_C = not name.endswith(PYTHON)
                measured = await measure(text, directory, count, rate, load)
                old = best.get(name)
                best[name] = measured if old is None or measured[2] < old[2] else old
        formats.NATIVE_LINES_IN_C = True
        base_cpu, _, base_process, base_wall, _ = best["none"]
        print(
            f"{'sink':32} {'serving µs':>10} {'added':>7} {'sinks µs':>8} {'process µs':>10} {'added':>7} "
            f"{'wall µs':>8} {'added':>7} {'dropped':>8}"
        )
        for name, (cpu, sinks, process, wall, dropped) in best.items():
            print(
                f"{name:32} {cpu:10.2f} {cpu - base_cpu:+7.2f} {sinks:8.2f} {process:10.2f} "
                f"{process - base_process:+7.2f} {wall:8.2f} {wall - base_wall:+7.2f} {dropped:8d}"
            )
        for in_python, label in ((False, "a sink"), (True, "a sink's pure-Python path")):
            costs = [
                cpu - base_cpu
                for name, (cpu, *_) in best.items()
                if name != "none" and name.endswith(PYTHON) == in_python
            ]
            if costs:
                target = "" if in_python else " (target ≤ 0.5)"
                print(f"largest serving-thread cost of {label}: {max(costs):+.2f} µs per query{target}")
        for name, (_, _, process, _, _) in best.items():
            if name.endswith("[c]"):
                print(f"whole-process cost, {name}: {process - base_process:+.2f} µs per query (target ≤ 0.6)")
        child.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="", help="comma-separated parts of case names (default: every case)")
    parser.add_argument("--rate", type=int, default=0, help="replays a second (default: as fast as they go)")
    parser.add_argument(
        "--path", choices=["batch", "fast"], default="batch", help="a UDP lane's batches, or one by one"
    )
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    load = Load(args.path, args.names, args.clients)
    asyncio.run(main(args.queries, args.rounds, [part for part in args.cases.split(",") if part], args.rate, load))
