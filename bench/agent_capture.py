"""Answer-to-allow latency by packet capture, with a real DoT upstream: the time from the protective resolver's
answer arriving at the agent (its TLS record on the wire) to the stub's answer leaving for the application — the
agent's TLS read, answer parsing, scope, allow state, the nf_tables commit and the release, as a capture on the
wire sees them (kernel timestamps on ``lo``; nothing inside the agent is instrumented).

In a network namespace this script creates (root needed): ``ztdns serve`` with a DoT listener on 127.0.0.2:853
that requires client certificates (``ztdns pki``), answering N distinct names (each its own address) from a local
zone; ``ztdns agent`` as its own process (stub 127.0.0.53, the host's certificate); a client process sending one
query per name at a fixed rate (bench/agent_latency.py's client); an ``AF_PACKET`` socket on ``lo`` taking
kernel timestamps. Each stub answer is paired with the last TLS record from the resolver before it (the queries
are paced, so each is answered before the next goes out). Two runs: the host alone, then with per-workload scoping on (a
``[[workload]]`` whose cgroup the client runs in: every query also looks up the asking socket's cgroup and goes
over that workload's own mTLS connection into its own sets). Targets: p50 ≤ 0.3 ms, p99 ≤ 2 ms.

    python bench/agent_capture.py [--names 3000] [--rate 500]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent_latency import percentile

PACKET_HOST = 0
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
RESOLVER, STUB = "127.0.0.2", "127.0.0.53"
ZTDNS = [sys.executable, "-m", "ztdns"]


class Capture:
    """Incoming packets on ``lo`` with kernel timestamps: resolver TLS data (TCP from :853 with a payload) and
    stub answers (UDP from 127.0.0.53:53), as (seconds, kind) in arrival order."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.events: list[tuple[float, str]] = []
        self.recording = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stub = socket.inet_aton(STUB)
        while not self.stopped:
            try:
                frame, ancillary, _, address = self.sock.recvmsg(256, 64)
            except TimeoutError:
                continue
            if address[2] != PACKET_HOST or not self.recording or len(frame) < 14 + 20:
                continue
            stamp = next(
                (struct.unpack("=qq", data) for level, kind, data in ancillary if kind == SO_TIMESTAMPNS), None
            )
            if stamp is None or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            header, protocol, total = (ip[0] & 15) * 4, ip[9], struct.unpack_from("!H", ip, 2)[0]
            seconds = stamp[0] + stamp[1] / 1e9
            if protocol == 6:
                source_port = struct.unpack_from("!H", ip, header)[0]
                payload = total - header - (ip[header + 12] >> 4) * 4
                if source_port == 853 and payload > 0:
                    self.events.append((seconds, "resolver"))
            elif protocol == 17 and ip[12:16] == stub and struct.unpack_from("!H", ip, header)[0] == 53:
                self.events.append((seconds, "stub"))

    def take(self) -> list[float]:
        """Milliseconds from each stub answer's resolver answer — the last TLS record from the resolver before it
        (queries are paced: one is answered before the next goes out, and a stray record such as a session
        ticket cannot shift the pairs) — to the stub answer."""
        events, self.events = sorted(self.events), []
        last: float | None = None
        gaps, unpaired = [], 0
        for seconds, kind in events:
            if kind == "resolver":
                last = seconds
            elif last is None:
                unpaired += 1
            else:
                gaps.append((seconds - last) * 1000)
                last = None
        if unpaired:
            print(f"  ({unpaired} stub answers without a resolver record before them: left out)")
        return gaps

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


def pki(folder: Path) -> None:
    tool = [*ZTDNS, "pki"]
    subprocess.run([*tool, "init", str(folder), "--name", "bench CA"], check=True, capture_output=True)
    issue = [
        ["server", "--dns", "dns.test", "--ip", RESOLVER, "--server"],
        ["host", "--spiffe-id", "spiffe://bench/host", "--client"],
        ["web", "--spiffe-id", "spiffe://bench/web", "--client"],
    ]
    for arguments in issue:
        subprocess.run([*tool, "issue", str(folder), *arguments], check=True, capture_output=True)


def serve(folder: Path, names: int) -> subprocess.Popen[bytes]:
    zone = ["bench. 300 IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 300"]
    zone += [f"n{i}.bench. 300 IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(names + 500)]
    (folder / "bench.zone").write_text("\n".join(zone) + "\n")
    pem = folder / "pki"
    (folder / "ztdns.toml").write_text(
        f"""[[listen]]
transport = "dot"
address = "{RESOLVER}:853"
cert = "{pem / "server.crt"}"
key = "{pem / "server.key"}"
ca = "{pem / "ca.crt"}"
client_auth = "require"

[resolver]
mode = "none"

[[local_zones]]
name = "bench"
file = "{folder / "bench.zone"}"

[identities.host]
certificates = ["spiffe://bench/host"]
policies = ["bench"]

[identities.web]
certificates = ["spiffe://bench/web"]
policies = ["bench"]

[policies.bench]
allow = ["**.bench"]

[dnssec]
validation = false

[log.query_log]
output = "off"

[metrics]
enabled = false
"""
    )
    process = subprocess.Popen([*ZTDNS, "serve", "--config", str(folder / "ztdns.toml")], stderr=subprocess.DEVNULL)
    wait_for(lambda: _listening(853), process, "ztdns serve")
    return process


def agent(folder: Path, workload: str) -> subprocess.Popen[bytes]:
    pem = folder / "pki"
    state = folder / "state"
    extra = ""
    if workload:
        extra = f"""[[workload]]
name = "web"
cgroup = "{workload}"
identity = "spiffe://bench/web"
client_cert = "{pem / "web.crt"}"
client_key = "{pem / "web.key"}"
"""
    (folder / "agent.toml").write_text(
        f"""identity = "spiffe://bench/host"
state_dir = "{state}"
resolv_conf = ""
[stub]
listen = ["{STUB}:53"]
[[server]]
address = "{RESOLVER}:853"
hostname = "dns.test"
[tls]
ca_file = "{pem / "ca.crt"}"
client_cert = "{pem / "host.crt"}"
client_key = "{pem / "host.key"}"
[metrics]
address = ""
{extra}"""
    )
    (state / "status.json").unlink(missing_ok=True)
    process = subprocess.Popen([*ZTDNS, "agent", "--config", str(folder / "agent.toml")], stderr=subprocess.DEVNULL)
    wait_for((state / "status.json").exists, process, "ztdns agent")
    return process


def _listening(port: int) -> bool:
    return f":{port} " in subprocess.run(["ss", "-ltnH"], check=False, capture_output=True, text=True).stdout


def wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{what} did not start")
        time.sleep(0.05)


def client(folder: Path, first: int, count: int, rate: int, cgroup: Path | None) -> dict[str, float]:
    """bench/agent_latency.py's UDP client (its own process, in ``cgroup`` when given) over n<first..>.bench."""
    import dns.message

    path = folder / f"queries-{first}"
    queries = [dns.message.make_query(f"n{i}.bench.", "A").to_wire() for i in range(first, first + count)]
    path.write_bytes(b"".join(len(q).to_bytes(2, "big") + q for q in queries))
    command = [sys.executable, str(Path(__file__).with_name("agent_latency.py")), "--client", str(path)]
    command += ["--rate", str(rate), "--stub", f"{STUB}:53"]
    if cgroup is not None:
        command = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "client", *command]
    summary: dict[str, float] = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    return summary


def run(folder: Path, capture: Capture, args: argparse.Namespace, label: str, cgroup: Path | None) -> None:
    relative = "" if cgroup is None else str(cgroup.relative_to("/sys/fs/cgroup"))
    process = agent(folder, relative)
    try:
        # Warm-up (TLS handshakes, session tickets, first allocations), not captured.
        client(folder, 0, 200, args.rate, cgroup)
        capture.recording = True
        summary = client(folder, 200 + args.offset, args.names, args.rate, cgroup)
        time.sleep(0.2)
        capture.recording = False
        gaps = capture.take()
        args.offset += args.names
    finally:
        process.terminate()
        process.wait(10)
        subprocess.run(["nft", "delete", "table", "inet", "ztdns"], check=False, capture_output=True)
        subprocess.run(["nft", "delete", "table", "netdev", "ztdns"], check=False, capture_output=True)
    p50, p99 = percentile(gaps, 0.5), percentile(gaps, 0.99)
    print(
        f"{label:<22} {len(gaps):>6} {p50:>8.3f} {p99:>8.3f} {max(gaps):>8.3f}   "
        f"client round trip p50 {summary.get('p50', 0):.3f} p99 {summary.get('p99', 0):.3f} ms"
    )


def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ztdns-bench-capture-"))
    (folder / "state").mkdir()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{RESOLVER}/8", "dev", "lo"], check=False, capture_output=True)
    pki(folder / "pki")
    # `ip netns exec` gives this process a /sys of its own: the cgroup v2 hierarchy, for the workload run.
    if not Path("/sys/fs/cgroup/cgroup.procs").exists():
        subprocess.run(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], check=True)
    cgroup = Path(f"/sys/fs/cgroup/ztdns-bench-{os.getpid()}")
    cgroup.mkdir()
    server = serve(folder, 200 + 2 * args.names)
    capture = Capture()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} CPUs; {args.rate} names/s")
    print(f"{'':<22} {'answers':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   target p50 ≤ 0.3, p99 ≤ 2")
    args.offset = 0
    try:
        run(folder, capture, args, "host identity", None)
        run(folder, capture, args, "per-workload scoping", cgroup)
    finally:
        capture.close()
        server.terminate()
        server.wait(10)
        cgroup.rmdir()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the runs")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=3000, help="distinct names per run (default 3000)")
    parser.add_argument("--rate", type=int, default=500, help="queries per second (default 500)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_capture: needs root (a network namespace, nftables, a packet socket)")
    if os.environ.get("ZTDNS_BENCH_NETNS") is None:
        namespace = f"ztdns-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        try:
            env = {**os.environ, "ZTDNS_BENCH_NETNS": namespace}
            command = ["ip", "netns", "exec", namespace, sys.executable, *sys.argv]
            sys.exit(subprocess.run(command, env=env, check=False).returncode)
        finally:
            subprocess.run(["ip", "netns", "del", namespace], check=False)
    main(arguments)
