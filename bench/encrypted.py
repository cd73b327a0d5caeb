"""DoT and DoH (GET, POST) throughput: ztdns listeners vs Unbound (tls-port/https-port), both with dnsperf.

ztdns is measured with a handler answering from pre-rendered responses in its synchronous fast path, which
is what a cache hit costs in the real server; Unbound answers the same names from local-data. Both run one
worker. dnsperf keeps its connections open (reuse, as real clients do). On a shared machine one run of each is
noise: ``--rounds`` alternates ztdns and Unbound runs and reports the medians.

    .venv/bin/python bench/encrypted.py [--seconds 5] [--clients 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import dns.message
import dns.rrset

from ztdns.client import ClientInfo
from ztdns.config.model import ListenConfig
from ztdns.pki import init_ca, issue
from ztdns.transport.doh import start_doh_listener
from ztdns.transport.dot import start_dot_listener
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
    process = await asyncio.create_subprocess_exec(
        "dnsperf", "-m", mode, "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", str(seconds),
        "-c", str(clients), "-T", "1", "-q", "200", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    match = re.search(r"Queries per second:\s+([\d.]+)", out.decode())
    if not match:
        print(out.decode(), file=sys.stderr)
        return 0.0
    return float(match.group(1))


def unbound_config(directory: Path, dot_port: int, doh_port: int) -> Path:
    local = "\n".join(f'    local-data: "{name} 300 IN A 192.0.2.1"' for name in NAMES)
    conf = directory / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: 127.0.0.1@{dot_port}
    interface: 127.0.0.1@{doh_port}
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
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
        await run(directory, datafile, args.seconds, args.clients, args.rounds)


async def run(directory: Path, datafile: Path, seconds: float, clients: int, rounds: int) -> None:
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
    u_dot, u_doh = free_port(), free_port()
    unbound = await asyncio.create_subprocess_exec(
        "unbound", "-d", "-c", str(unbound_config(directory, u_dot, u_doh)), stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(1.0)
    cases = [
        ("DoT", "dot", dot.address[1], u_dot, ()),
        ("DoH POST", "doh", doh.address[1], u_doh, ("-O", "doh-method=POST")),
        ("DoH GET", "doh", doh.address[1], u_doh, ("-O", "doh-method=GET")),
    ]
    try:
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
    finally:
        unbound.terminate()
        await unbound.wait()
        await dot.close(drain_seconds=0.5)
        await doh.close(drain_seconds=0.5)


if __name__ == "__main__":
    import uvloop  # the server's event loop

    uvloop.run(main())
