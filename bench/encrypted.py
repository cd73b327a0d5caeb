"""DoT and DoH (GET, POST) throughput: ztdns vs Unbound (tls-port/https-port), both with dnsperf.

Two ztdns targets (``--target handler|serve|both``):
- ``handler``: the listeners in this process with a handler answering from pre-rendered responses in its
  synchronous fast path (the transport's own cost);
- ``serve``: the real ``ztdns serve`` in a subprocess, policy on (an identity
  for 127.0.0.0/8 whose policy allows the names), forwarding to the same Unbound over Do53 and answering from its
  cache after a warm-up run — what a deployed resolver does for popular names.
Unbound answers the same names from local-data. Both run one worker. dnsperf keeps its connections open (reuse,
as real clients do).

    .venv/bin/python bench/encrypted.py [--seconds 5] [--clients 10] [--rounds 3] [--target both]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset

from dnsperf_run import dnsperf_command, run_dnsperf_async
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


async def dnsperf(mode: str, port: int, datafile: Path, seconds: float, clients: int, *extra: str) -> float:
    command = dnsperf_command(
        "127.0.0.1", port, datafile, seconds=seconds, clients=clients, mode=mode, outstanding=200, extra=extra
    )
    return (await run_dnsperf_async(command)).qps


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


def serve_config(directory: Path, dot_port: int, doh_port: int, upstream: int) -> Path:
    tls = f'cert = "{directory / "server.crt"}"\nkey = "{directory / "server.key"}"'
    conf = directory / "ztdns.toml"
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
output = "off"

[metrics]
enabled = false
"""
    )
    return conf


class Serve:
    """``ztdns serve --config CONF`` in a subprocess."""

    def __init__(self, conf: Path) -> None:
        self.log = conf.parent / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ztdns", "serve", "--config", str(conf)], stderr=self.log.open("wb")
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
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--target", choices=["handler", "serve", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server; medians are printed")
    args = parser.parse_args()
    for tool in ("dnsperf", "unbound"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
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
        try:
            if args.target in ("handler", "both"):
                dot, doh = await start_handler_listeners(directory)
                try:
                    print("ztdns = listeners in this process, pre-rendered fast-path handler")
                    await compare(
                        dot.address[1], doh.address[1], u_dot, u_doh, datafile, args.seconds, args.clients, args.rounds
                    )
                finally:
                    await dot.close(drain_seconds=0.5)
                    await doh.close(drain_seconds=0.5)
            if args.target in ("serve", "both"):
                z_dot, z_doh = free_port(), free_port()
                server = Serve(serve_config(directory, z_dot, z_doh, u_do53))
                try:
                    # Warm-up: every name once through policy and the forwarder into the cache.
                    await dnsperf("dot", z_dot, datafile, 1, 1)
                    print("ztdns = `ztdns serve`, policy on, cache hits from an Unbound upstream")
                    await compare(z_dot, z_doh, u_dot, u_doh, datafile, args.seconds, args.clients, args.rounds)
                finally:
                    server.stop()
        finally:
            unbound.terminate()
            await unbound.wait()


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


async def compare(
    dot: int, doh: int, u_dot: int, u_doh: int, datafile: Path, seconds: float, clients: int, rounds: int
) -> None:
    """One run of each is noise on a shared machine: alternate ztdns and Unbound ``rounds`` times, print medians."""
    cases = [
        ("DoT", "dot", dot, u_dot, ()),
        ("DoH POST", "doh", doh, u_doh, ("-O", "doh-method=POST")),
        ("DoH GET", "doh", doh, u_doh, ("-O", "doh-method=GET")),
    ]
    print(f"{'transport':10} {'ztdns q/s':>12} {'unbound q/s':>12} {'ratio':>7}")
    for label, mode, ours, theirs, extra in cases:
        ours_uri = ("-O", f"doh-uri=https://127.0.0.1:{ours}/dns-query") if mode == "doh" else ()
        theirs_uri = ("-O", f"doh-uri=https://127.0.0.1:{theirs}/dns-query") if mode == "doh" else ()
        ztdns_runs, unbound_runs = [], []
        for _ in range(rounds):
            ztdns_runs.append(await dnsperf(mode, ours, datafile, seconds, clients, *extra, *ours_uri))
            unbound_runs.append(await dnsperf(mode, theirs, datafile, seconds, clients, *extra, *theirs_uri))
        z, u = statistics.median(ztdns_runs), statistics.median(unbound_runs)
        print(f"{label:10} {z:12.0f} {u:12.0f} {z / u if u else 0:7.2f}", flush=True)


if __name__ == "__main__":
    import uvloop  # the server's event loop

    uvloop.run(main())
