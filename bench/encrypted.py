"""DoT and DoH (GET, POST) throughput: ztdns vs Unbound (tls-port/https-port), both with dnsperf.

Two ztdns targets (``--target handler|serve|both``):
- ``handler``: the listeners in this process with a handler answering from pre-rendered responses in its
  synchronous fast path (the transport's own cost);
- ``serve``: the real ``ztdns serve`` in a subprocess, policy on (an identity
  for 127.0.0.0/8 whose policy allows the names), forwarding to the same Unbound over Do53 and answering from its
  cache after a warm-up run — what a deployed resolver does for popular names.
Unbound answers the same names from local-data. Both run one worker. dnsperf keeps its connections open (reuse,
as real clients do). Each transport runs over a grid of load shapes (dnsperf ``-c`` clients × ``-q`` outstanding,
``bench/dnsperf_run.py``), alternating the servers, and prints the worst ratio over the grid and each server's CPU
per query; dnsperf is pinned to one CPU, the server under test to the other. ``ztdns serve`` runs in the default
configuration first: the query log on, the JSON sink writing to a file (``--query-log both`` adds a second
``ztdns serve`` with the log off); ``--baseline DIR`` adds, for each, one running the package in DIR (another
checkout's ``src``): an A/B comparison of two versions, alternating, in one run.

    .venv/bin/python bench/encrypted.py [--seconds 4] [--rounds 2] [--grid full|1x64,4x256,...] [--target serve]
                                        [--transports dot,doh-post,doh-get] [--query-log file|off|both]
                                        [--baseline OTHER-CHECKOUT/src]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rrset

from dnsperf_run import Contender, compare_grid, dnsperf_command, parse_grid, run_dnsperf_async, shaped
from ztdns.client import ClientInfo
from ztdns.config.listen import ListenConfig
from ztdns.pki import init_ca, issue
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.dot import start_dot_listener
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tls import TlsMaterial

NAMES = [f"host{i}.bench.test." for i in range(100)]


class PrerenderedHandler:
    def __init__(self) -> None:
        self.answers: dict[bytes, bytes] = {}
        for name in NAMES:
            query = dns.message.make_query(name, "A", use_edns=False)
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
            self.answers[query.to_wire()[2:]] = response.to_wire()[2:]

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        answer = self.answers.get(wire[2:])
        return wire[:2] + answer if answer is not None else None

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def warm_up(port: int, datafile: Path) -> None:
    """Every name once through policy and the forwarder into the cache (and the replay table)."""
    await run_dnsperf_async(dnsperf_command("127.0.0.1", port, datafile, seconds=1, clients=1, mode="dot"))


def unbound_config(directory: Path, dot_port: int, doh_port: int, do53_port: int) -> Path:
    local = "\n".join(f'    local-data: "{name} 300 IN A 192.0.2.1"' for name in NAMES)
    conf = directory / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: 127.0.0.1@{dot_port}
    interface: 127.0.0.1@{doh_port}
    interface: 127.0.0.1@{do53_port}
    tls-port: {dot_port}
    https-port: {doh_port}
    tls-service-key: "{directory}/server.key"
    tls-service-pem: "{directory}/server.crt"
    http-endpoint: "/dns-query"
    http-notls-downstream: no
    num-threads: 1
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-not-query-localhost: yes
    incoming-num-tcp: 1000
    local-zone: "bench.test." static
{local}
remote-control:
    control-enable: no
"""
    )
    return conf


def serve_config(directory: Path, label: str, dot_port: int, doh_port: int, upstream: int, log: bool) -> Path:
    tls = f'cert = "{directory / "server.crt"}"\nkey = "{directory / "server.key"}"'
    conf = directory / f"{label}.toml"
    query_log = f'output = "{directory / label}.jsonl"' if log else 'output = "off"'
    conf.write_text(
        f"""
[[listen]]
transport = "dot"
address = "127.0.0.1:{dot_port}"
{tls}

[[listen]]
transport = "doh"
address = "127.0.0.1:{doh_port}"
{tls}

[resolver]
upstreams = [{{ address = "127.0.0.1:{upstream}" }}]

[dnssec]
validation = false  # the upstream serves unsigned bench names

[identities.bench]
networks = ["127.0.0.0/8"]
policies = ["bench"]

[policies.bench]
allow = ["**.bench.test"]
deny = ["ads.bench.test"]

[log.query_log]
{query_log}

[metrics]
enabled = false
"""
    )
    return conf


class Serve:
    """``ztdns serve --config CONF`` in a subprocess."""

    def __init__(self, conf: Path, source: Path | None = None) -> None:
        """``source``: run the ztdns package under this directory (another checkout's ``src``) instead of ours."""
        self.log = conf.with_suffix(".log")
        env = os.environ if source is None else {**os.environ, "PYTHONPATH": str(source)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ztdns", "serve", "--config", str(conf)], stderr=self.log.open("wb"), env=env
        )
        deadline = time.monotonic() + 20
        while "listening on doh" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ztdns serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument(
        "--clients", type=int, help="one load shape, dnsperf -c CLIENTS -q 200 (the bench before the grid)"
    )
    parser.add_argument(
        "--grid", default="full", help="load shapes CLIENTSxOUTSTANDING,... (full: 1/4/16 × 64/256/1024)"
    )
    parser.add_argument("--target", choices=["handler", "serve", "both"], default="serve")
    parser.add_argument("--transports", default="dot,doh-post,doh-get")
    parser.add_argument("--query-log", choices=["file", "off", "both"], default="file", help="of `ztdns serve`")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per server and load shape")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="A/B: also run `ztdns serve` from another checkout's src directory, for each log setting",
    )
    args = parser.parse_args()
    if args.clients is not None:
        args.grid = f"{args.clients}x200"
    for tool in ("dnsperf", "unbound"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    bench = Bench(parse_grid(args.grid), args.seconds, args.rounds, args.transports.split(","))
    with tempfile.TemporaryDirectory(prefix="ztdns-bench-") as tmp:
        directory = Path(tmp)
        init_ca(directory)
        issue(directory, "server", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        datafile = directory / "queries.txt"
        datafile.write_text("".join(f"{name} A\n" for name in NAMES))
        u_dot, u_doh, u_do53 = free_port(), free_port(), free_port()
        unbound = await asyncio.create_subprocess_exec(
            "unbound",
            "-d",
            "-c",
            str(unbound_config(directory, u_dot, u_doh, u_do53)),
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(1.0)
        reference = Target("unbound", unbound.pid, u_dot, u_doh)
        try:
            if args.target in ("handler", "both"):
                dot, doh = await start_handler_listeners(directory)
                try:
                    print("ztdns = listeners in this process, pre-rendered fast-path handler")
                    here = Target("ztdns listeners", os.getpid(), dot.address[1], doh.address[1])
                    await bench.compare([here, reference], datafile)
                finally:
                    await dot.close(drain_seconds=0.5)
                    await doh.close(drain_seconds=0.5)
            if args.target in ("serve", "both"):
                servers: list[tuple[Serve, Target]] = []
                try:
                    logs = {"file": [True], "off": [False], "both": [True, False]}[args.query_log]
                    sources = [None] if args.baseline is None else [None, args.baseline]
                    for log, source in ((log, source) for log in logs for source in sources):
                        label = "ztdns" + ("" if source is None else " baseline") + ("" if log else " log off")
                        z_dot, z_doh = free_port(), free_port()
                        conf = serve_config(directory, label.replace(" ", "-"), z_dot, z_doh, u_do53, log)
                        server = Serve(conf, source)
                        servers.append((server, Target(label, server.process.pid, z_dot, z_doh)))
                        await warm_up(z_dot, datafile)
                    print("ztdns = `ztdns serve`, policy on, cache hits from an Unbound upstream")
                    await bench.compare([target for _, target in servers] + [reference], datafile)
                finally:
                    for server, _ in servers:
                        server.stop()
        finally:
            unbound.terminate()
            await unbound.wait()


@dataclass(frozen=True)
class Target:
    label: str
    pid: int
    dot: int
    doh: int


@dataclass(frozen=True)
class Bench:
    grid: Sequence[tuple[int, int]]
    seconds: float
    rounds: int
    transports: Sequence[str]

    async def compare(self, targets: Sequence[Target], datafile: Path) -> None:
        """Per transport: every target over the grid, alternating, the last one (Unbound) the reference."""
        cases = {
            "dot": ("DoT", "dot", ()),
            "doh-post": ("DoH POST", "doh", ("-O", "doh-method=POST")),
            "doh-get": ("DoH GET", "doh", ("-O", "doh-method=GET")),
        }
        for name in self.transports:
            title, mode, method = cases[name]
            contenders = [
                Contender(target.label, target.pid, self.command(mode, target, datafile, method)) for target in targets
            ]
            await compare_grid(title, contenders, self.grid, self.rounds)

    def command(
        self, mode: str, target: Target, datafile: Path, method: Sequence[str]
    ) -> Callable[[int, int], list[str]]:
        port = target.dot if mode == "dot" else target.doh
        extra = [*method, "-O", f"doh-uri=https://127.0.0.1:{port}/dns-query"] if mode == "doh" else []
        return shaped(port, datafile, self.seconds, mode=mode, extra=extra)


async def start_handler_listeners(directory: Path) -> tuple[TlsStreamListener, TlsStreamListener]:
    handler = PrerenderedHandler()
    common = {
        "address": "127.0.0.1:0",
        "cert": str(directory / "server.crt"),
        "key": str(directory / "server.key"),
    }
    dot_config = ListenConfig.model_validate({"transport": "dot", **common})
    doh_config = ListenConfig.model_validate({"transport": "doh", **common})
    dot = await start_dot_listener(dot_config, handler, TlsMaterial.from_config(dot_config))
    doh = await start_doh_listener(doh_config, handler, TlsMaterial.from_config(doh_config))
    return dot, doh


if __name__ == "__main__":
    import uvloop  # the server's event loop

    uvloop.run(main())
