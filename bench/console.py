"""The console's data with a full memory sink: how long the admin API takes to answer the query log, overview and
detections pages when the sink holds 100,000 records (issue 23: "fast with 100k log records").

    .venv/bin/python bench/console.py [--records 100000] [--requests 30]

Runs examples/console.toml as written (its own copy, with development certificates from `ztdns pki` and free
ports), fills the sink with dnsperf (2,000 names, a tenth of them blocked by the default deny), then asks each
endpoint ``--requests`` times over one HTTPS connection with the example's development token and prints the median
and the slowest (p100) time per request, client side, in milliseconds. A search that matches almost nothing is
the slow case: it reads every record. The target is an interactive page: well under 100 ms per request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnsperf_run import dnsperf_command

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ztd_development-console-token-do-not-use-in-production"
ZTDNS = [sys.executable, "-m", "ztdns"]
ENDPOINTS = {
    "query log, first page": "/v1/querylog",
    "query log, rare match (full pass)": "/v1/querylog?name=name1999&decision=deny&client=10.9.9.9",
    "query log, blocked only": "/v1/querylog?decision=deny",
    "overview (60 buckets)": "/v1/overview",
    "detections": "/v1/detections",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def setup(folder: Path, dns_port: int, admin_port: int, metrics_port: int, records: int) -> Path:
    pki = folder / "console-pki"
    for command in (
        ["pki", "init", str(pki), "--name", "ztdns console CA"],
        ["pki", "issue", str(pki), "console", "--ip", "127.0.0.1", "--server"],
    ):
        subprocess.run([*ZTDNS, *command], check=True, capture_output=True)
    text = (ROOT / "examples" / "console.toml").read_text()
    for old, new in (
        ("127.0.0.1:5300", f"127.0.0.1:{dns_port}"),
        ("127.0.0.1:9443", f"127.0.0.1:{admin_port}"),
        ("127.0.0.1:9153", f"127.0.0.1:{metrics_port}"),
        ("records = 100000", f"records = {records}"),
    ):
        text = text.replace(old, new)
    config = folder / "console.toml"
    config.write_text(text)
    return config


def fill(folder: Path, dns_port: int, records: int) -> None:
    """``records`` answered queries: allowed local names and blocked partner names (a tenth)."""
    names = folder / "names.txt"
    lines = []
    for i in range(2000):
        zone = "partner.example" if i % 10 == 0 else "corp.example"
        lines.append(f"name{i}.{zone} A")
    names.write_text("\n".join(lines) + "\n")
    rounds = -(-records // len(lines))
    for _ in range(rounds):
        command = dnsperf_command("127.0.0.1", dns_port, names, seconds=None, clients=1, outstanding=64, pin=False)
        subprocess.run(command, check=True, capture_output=True)


def ask(connection: http.client.HTTPSConnection, path: str) -> float:
    started = time.perf_counter()
    connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"{path}: {response.status} {body[:200]!r}")
    json.loads(body)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        dns_port, admin_port, metrics_port = free_port(), free_port(), free_port()
        config = setup(folder, dns_port, admin_port, metrics_port, args.records)
        quiet = subprocess.DEVNULL
        server = subprocess.Popen([*ZTDNS, "serve", "--config", str(config)], stdout=quiet, stderr=quiet)
        try:
            context = ssl.create_default_context(cafile=str(folder / "console-pki" / "ca.crt"))
            deadline = time.monotonic() + 30
            while True:
                try:
                    connection = http.client.HTTPSConnection("127.0.0.1", admin_port, context=context, timeout=30)
                    ask(connection, "/v1/session")
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("ztdns serve did not start") from None
                    time.sleep(0.2)
            fill(folder, dns_port, args.records)
            time.sleep(1)  # the sink's thread takes the last batch
            connection.request("GET", "/v1/querylog?limit=1", headers={"Authorization": f"Bearer {TOKEN}"})
            held = json.loads(connection.getresponse().read())["held"]
            print(f"memory sink holds {held} records")
            for label, path in ENDPOINTS.items():
                times = [ask(connection, path) * 1000 for _ in range(args.requests)]
                print(f"{label:36s} median {statistics.median(times):7.1f} ms  slowest {max(times):7.1f} ms")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
