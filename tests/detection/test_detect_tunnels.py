"""Real tunnelling tools through `ztdns serve`: iodine (NULL records, IP over DNS) and dns2tcp (TXT, TCP over DNS).

Two network namespaces joined by a veth pair: the server side runs the tool's authority (iodined / dns2tcpd on
127.0.0.1:5300) and ztdns on 10.99.x.1:53 forwarding to it; the client side runs the tool's client against
ztdns. Payload is pushed through the tunnel at a measured rate; the test waits for the detect event. Detection
runs in observe mode so the tunnel keeps working while it is timed; enforce is checked at the end with a query
under the tunnel domain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from detect_lab import forwarding, listening, open_identities
from fixtures.tools import require_tool
from ztdns.lab import netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(netns.available() is not None, reason=netns.available() or ""),
]

CONFIG = (
    listening("{server}:53", tcp=True)
    + forwarding("127.0.0.1:5300")
    + open_identities(lab=["10.99.0.0/16"])
    + """
[resolver]
timeout = 3.0
budget = 6.0

[cache]
max_ttl = 0

[metrics]
enabled = false

[detect]
mode = "{mode}"

[detect.rate_limit]
per_prefix = 5000
"""
)

# Sends random (incompressible) bytes at a rate: over UDP through iodine's tun, or to stdout for dns2tcpc.
PUMP = """
import os, socket, sys, time
rate, target = float(sys.argv[1]), sys.argv[2]
chunk = max(20, int(rate / 10))
sock = None
if target != "-":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
sent = 0
while True:
    data = os.urandom(chunk)
    if sock is None:
        sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
    else:
        sock.sendto(data, (target, 9))
    sent += chunk
    delay = start + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""

SINK = """
import socket, threading
server = socket.create_server(("127.0.0.1", 9999))
def drain(conn):
    while conn.recv(65536):
        pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
"""


@dataclass
class Lab:
    server_ns: str
    client_ns: str
    server_ip: str
    directory: Path
    processes: list[subprocess.Popen[bytes]]

    def run(
        self,
        namespace: str,
        *command: str,
        stdout: IO[bytes] | None = None,
        stdin: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{len(self.processes)}-{Path(command[0]).name}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command], stdout=stdout or log, stderr=log, stdin=stdin, env=env
        )
        self.processes.append(process)
        return process

    def serve(self, mode: str) -> Path:
        config = self.directory / "ztdns.toml"
        config.write_text(CONFIG.format(server=self.server_ip, mode=mode))
        log = self.directory / "querylog.jsonl"
        process = self.run(
            self.server_ns,
            sys.executable,
            "-m",
            "ztdns",
            "serve",
            "--config",
            str(config),
            stdout=log.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        stderr = self.directory / f"{len(self.processes) - 1}-{Path(sys.executable).name}.log"
        while "listening" not in stderr.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, stderr.read_text(errors="replace")
            time.sleep(0.1)
        return log

    def events(self, log: Path) -> list[tuple[float, dict[str, object]]]:
        """Detect events with the time their line was read (the log has wall-clock times, so does this)."""
        found = []
        for line in log.read_text(errors="replace").splitlines():
            if '"event": "detect"' in line:
                event = json.loads(line)
                found.append((time.time(), event))
        return found

    def wait_event(self, log: Path, detector: str, timeout: float) -> dict[str, object] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, event in self.events(log):
                if event["detector"] == detector:
                    return event
            time.sleep(0.25)
        return None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"ztdS{tag}", f"ztdC{tag}"
    octet = os.getpid() % 200 + 20
    server_ip, client_ip = f"10.99.{octet}.1", f"10.99.{octet}.2"
    netns.create(server_ns)
    netns.create(client_ns)
    lab = Lab(server_ns, client_ns, server_ip, tmp_path, [])
    try:
        subprocess.run(
            ["ip", "-n", server_ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", client_ns],
            check=True,
        )
        for namespace, address, device in ((server_ns, server_ip, "v0"), (client_ns, client_ip, "v1")):
            subprocess.run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", device], check=True)
            subprocess.run(["ip", "-n", namespace, "link", "set", device, "up"], check=True)
        yield lab
    finally:
        for process in reversed(lab.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        netns.delete(server_ns)
        netns.delete(client_ns)


def _enforced_answer(lab: Lab, name: str) -> tuple[int, str]:
    """rcode and EDE text of a query under the tunnel domain, asked from the client side."""
    holder: list[tuple[int, str]] = []

    async def ask() -> None:
        query = dns.message.make_query(name, "TXT", use_edns=0)
        response = dns.query.udp(query, lab.server_ip, timeout=3)
        text = next((o.text or "" for o in response.options if isinstance(o, dns.edns.EDEOption)), "")
        holder.append((response.rcode(), text))

    loop = netns.NetnsLoop(lab.client_ns)
    try:
        loop.run(ask(), timeout=10)
    finally:
        loop.close()
    return holder[0]


def _iodine_up(lab: Lab, domain: str) -> None:
    require_tool("iodined")
    require_tool("iodine")
    lab.run(
        lab.server_ns, "iodined", "-f", "-c", "-l", "127.0.0.1", "-p", "5300", "-P", "ztdnstest", "10.53.0.1/27", domain
    )
    time.sleep(1)
    client = lab.run(lab.client_ns, "iodine", "-f", "-r", "-P", "ztdnstest", lab.server_ip, domain)
    deadline = time.monotonic() + 60
    log = lab.directory / f"{len(lab.processes) - 1}-iodine.log"
    while "Connection setup complete" not in log.read_text(errors="replace"):
        assert client.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)


def _dns2tcp_up(lab: Lab, domain: str) -> subprocess.Popen[bytes]:
    require_tool("dns2tcpd")
    require_tool("dns2tcpc")
    config = lab.directory / "dns2tcpd.conf"
    config.write_text(
        f"listen = 127.0.0.1\nport = 5300\nuser = nobody\nchroot = /tmp\ndomain = {domain}\n"
        "resources = sink:127.0.0.1:9999\n"
    )
    lab.run(lab.server_ns, sys.executable, "-c", SINK)
    lab.run(lab.server_ns, "dns2tcpd", "-F", "-f", str(config))
    time.sleep(1)
    return lab.run(
        lab.client_ns, "dns2tcpc", "-z", domain, "-r", "sink", "-l", "-", lab.server_ip, stdin=subprocess.PIPE
    )


@pytest.mark.parametrize(("rate", "within"), [(1000.0, 10.0), (50.0, 60.0)])
def test_iodine_is_flagged(lab: Lab, rate: float, within: float) -> None:
    domain = "t.iodine.test"
    log = lab.serve("observe")
    _iodine_up(lab, domain)
    setup_events = [event for _, event in lab.events(log) if event["detector"] == "tunnel"]
    started = time.monotonic()
    lab.run(lab.client_ns, sys.executable, "-c", PUMP, str(rate), "10.53.0.1")
    event = setup_events[0] if setup_events else lab.wait_event(log, "tunnel", within)
    elapsed = time.monotonic() - started
    assert event is not None, f"no tunnel verdict within {within} s at {rate} B/s"
    print(
        f"iodine {rate:.0f} B/s: flagged after {elapsed:.1f} s ({'during setup' if setup_events else 'payload'}):"
        f" {event['text']}"
    )
    assert str(event["key"]).endswith("domain=iodine.test")


@pytest.mark.parametrize(("rate", "within"), [(1000.0, 10.0), (50.0, 60.0)])
def test_dns2tcp_is_flagged(lab: Lab, rate: float, within: float) -> None:
    domain = "t.dns2tcp.test"
    log = lab.serve("observe")
    client = _dns2tcp_up(lab, domain)
    pump = subprocess.Popen([sys.executable, "-c", PUMP, str(rate), "-"], stdout=client.stdin)
    lab.processes.append(pump)
    started = time.monotonic()
    event = lab.wait_event(log, "tunnel", within)
    elapsed = time.monotonic() - started
    assert event is not None, f"no tunnel verdict within {within} s at {rate} B/s"
    print(f"dns2tcp {rate:.0f} B/s: flagged after {elapsed:.1f} s: {event['text']}")
    assert str(event["key"]).endswith("domain=dns2tcp.test")


def test_an_enforced_tunnel_verdict_answers_nxdomain_with_the_explanation(lab: Lab) -> None:
    domain = "t.dns2tcp.test"
    log = lab.serve("enforce")
    client = _dns2tcp_up(lab, domain)
    pump = subprocess.Popen([sys.executable, "-c", PUMP, "2000", "-"], stdout=client.stdin)
    lab.processes.append(pump)
    assert lab.wait_event(log, "tunnel", 15) is not None
    rcode, text = _enforced_answer(lab, f"abcdef.{domain}.")
    assert rcode == dns.rcode.NXDOMAIN
    assert text.startswith("detect=tunnel identity=lab domain=dns2tcp.test rate=")
