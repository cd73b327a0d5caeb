"""A network lab for the agent's end-to-end tests, in namespaces the tests create and always remove.

    container (…-k) ──eth1── client (…-c) ──eth0── server (…-s)
    192.0.2.130              192.0.2.129, 192.0.2.1,   192.0.2.10, 2001:db8:1::10: the protective resolver
                             2001:db8:1::1; the agent  echo tcp/8080 udp/8081 on 198.51.100.x and 2001:db8:2::10

The protective resolver is either

- ``unbound``: DoT :853 and Do53 :53 with a certificate from a test CA, answering the test names from
  local-data (anything else in ``test.`` is NXDOMAIN, as a protective resolver answers a blocked name) — quick
  to start, for the tests of the agent's own mechanics; or
- ``ztdns``: the real closed loop. ``ztdns serve`` with DoT :853 and DoH :443 requiring client certificates
  (made with ``ztdns pki``), identities by SPIFFE ID and a per-identity policy, forwarding to an Unbound on the
  server's loopback that holds the test zone.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
PYTHON = sys.executable
TCP_PORT = 8080
UDP_PORT = 8081
RESOLVER = "192.0.2.10"

ZONE = {
    "allowed.test.": ("A", "198.51.100.10", 300),
    "short.test.": ("A", "198.51.100.11", 1),
    "target.test.": ("A", "198.51.100.12", 300),
    "refresh.test.": ("A", "198.51.100.13", 4),
    "v6.test.": ("AAAA", "2001:db8:2::10", 300),
    "shared.test.": ("A", "198.51.100.10", 600),  # allowed.test's address, granted longer
}
# The closed-loop zone: names the policy denies exist upstream, so only the policy keeps them closed.
CLOSED_LOOP_ZONE = {
    **ZONE,
    "denied.test.": ("A", "198.51.100.20", 300),
    "sneaky.test.": ("CNAME", "denied.test.", 300),
    "alias.test.": ("CNAME", "target.test.", 300),
    "cached.test.": ("A", "198.51.100.14", 30),
    "scoped.test.": ("A", "198.51.100.15", 300),  # allowed on tcp/8080 only
}
# One name with 300 addresses (more than the default per-name cap), all local to the server (AnyIP routes).
MANY = [f"198.51.{101 + i // 256}.{i % 256}" for i in range(300)]
MANY_RECORDS = [f"many.test. 300 IN A {address}" for address in MANY]
HOST_ID = "spiffe://test/host"
GUEST_ID = "spiffe://test/guest"
SERVICE_ADDRESSES = ["198.51.100.10", "198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14"]
SERVICE_ADDRESSES += ["198.51.100.15", "198.51.100.20"]
SERVICE_ADDRESSES += ["198.51.100.30", "2001:db8:2::10"]


def needs_root(*tools: str) -> pytest.MarkDecorator:
    missing = [tool for tool in ("ip", "nft", "unbound", *tools) if shutil.which(tool) is None]
    reason = "needs root (network namespaces, nftables)" if os.geteuid() != 0 else ""
    if missing:
        reason = f"needs {', '.join(missing)} (Debian: iproute2 nftables unbound knot-dnsutils)"
    return pytest.mark.skipif(bool(reason), reason=reason or "ok")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=20)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def make_certs(folder: Path) -> None:
    """ca.pem, server.pem/server.key (dns.test, 192.0.2.10), client.pem/client.key (spiffe://test/host)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ztdns test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaves: list[tuple[str, x509.GeneralName]] = [
        ("server", x509.DNSName("dns.test")),
        ("client", x509.UniformResourceIdentifier("spiffe://test/host")),
    ]
    for index, (name, san) in enumerate(leaves, start=2):
        key = _key()
        names = [san] + ([x509.IPAddress(ipaddress.ip_address(RESOLVER))] if name == "server" else [])
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(index)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(_pem_key(key))


class Probe:
    """A long-running agent_probe.py inside a namespace (and, given one, in a cgroup v2 group of its own)."""

    def __init__(self, netns: str, cgroup: Path | None = None) -> None:
        command = ["ip", "netns", "exec", netns, PYTHON, str(HERE / "agent_probe.py")]
        if cgroup is not None:  # moved in before it makes a socket: a socket belongs to its creator's cgroup
            command = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "probe", *command]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.process.stdout.readline())
        return result

    def connects(self, host: str, port: int = TCP_PORT, timeout: float = 0.4, hold: str = "") -> bool:
        return bool(self.ask(op="connect", host=host, port=port, timeout=timeout, hold=hold)["ok"])

    def udp(self, host: str, port: int = UDP_PORT, timeout: float = 0.4) -> bool:
        return bool(self.ask(op="udp", host=host, port=port, timeout=timeout)["ok"])

    def resolve(self, name: str, qtype: str = "A", server: str = "127.0.0.53", **kw: Any) -> dict[str, Any]:
        return self.ask(op="dns", name=name, type=qtype, server=server, timeout=kw.pop("timeout", 3.0), **kw)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(5)


class Lab:
    def __init__(self, folder: Path, protective: str = "unbound") -> None:
        self.folder = folder
        self.protective = protective
        prefix = f"ztdns-test-{os.getpid()}-{protective[0]}"
        self.client, self.server, self.container = f"{prefix}-c", f"{prefix}-s", f"{prefix}-k"
        self.unbound: subprocess.Popen[bytes] | None = None
        self.serve: subprocess.Popen[bytes] | None = None  # `ztdns serve` in the ztdns lab
        self.echo: subprocess.Popen[str] | None = None
        self.pki = folder / "pki"

    def in_ns(self, netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *args, check=check)

    def build(self) -> None:
        for netns in (self.client, self.server, self.container):
            sh("ip", "netns", "add", netns)
            self.in_ns(netns, "ip", "link", "set", "lo", "up")
        for link, peer in (("eth0", self.server), ("eth1", self.container)):
            sh("ip", "-n", self.client, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", peer)
        setup = {
            self.client: [
                "addr add 192.0.2.1/25 dev eth0",
                "addr add 2001:db8:1::1/64 dev eth0 nodad",
                "addr add 192.0.2.129/25 dev eth1",
                "link set eth0 up",
                "link set eth1 up",
                "route add 198.51.100.0/24 via 192.0.2.10",
                "route add 2001:db8:2::/64 via 2001:db8:1::10",
                "route add 198.51.101.0/24 via 192.0.2.10",
                "route add 198.51.102.0/24 via 192.0.2.10",
            ],
            self.server: [
                "addr add 192.0.2.10/25 dev eth0",
                "addr add 2001:db8:1::10/64 dev eth0 nodad",
                "link set eth0 up",
                "route add 192.0.2.128/25 via 192.0.2.1",
                *(f"addr add {a}/{128 if ':' in a else 32} dev lo nodad" for a in SERVICE_ADDRESSES),
                "route add local 198.51.101.0/24 dev lo",
                "route add local 198.51.102.0/24 dev lo",
            ],
            self.container: [
                "addr add 192.0.2.130/25 dev eth0",
                "link set eth0 up",
                "route add default via 192.0.2.129",
            ],
        }
        for netns, commands in setup.items():
            for command in commands:
                sh("ip", "-n", netns, *command.split())
        self.in_ns(self.client, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.protective == "ztdns":
            self.start_ztdns()
        else:
            make_certs(self.folder)
            self.start_unbound()
        self.echo = subprocess.Popen(
            ["ip", "netns", "exec", self.server, PYTHON, str(HERE / "agent_echo.py"), str(TCP_PORT), str(UDP_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.echo.stdout is not None and self.echo.stdout.readline().strip() == "ready"

    def start_unbound(self) -> None:
        """The protective resolver of the ``unbound`` lab: DoT :853 and Do53 :53 on the resolver address."""
        tls = f"""  interface: {RESOLVER}@853
  interface: {RESOLVER}@53
  tls-port: 853
  tls-service-key: "{self.folder / "server.key"}"
  tls-service-pem: "{self.folder / "server.pem"}"
"""
        self.unbound = self._unbound(tls, ZONE, "853")

    def _unbound(self, interfaces: str, zone: dict[str, tuple[str, str, int]], port: str) -> subprocess.Popen[bytes]:
        records = [f"{n} {ttl} IN {t} {v}" for n, (t, v, ttl) in zone.items()] + MANY_RECORDS
        if self.protective == "ztdns":
            # An authoritative zone for the iterator: CNAME chains inside it are followed, as a recursive
            # resolver upstream of ztdns would (local-data answers a CNAME alone).
            soa = "test. 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"
            (self.folder / "test.zone").write_text("\n".join([soa, "test. 300 IN NS ns.test.", *records]) + "\n")
            # nodefault: Unbound answers the special-use name test. itself unless told not to (RFC 6761).
            data = f"""  local-zone: "test." nodefault
auth-zone:
  name: "test."
  zonefile: "{self.folder / "test.zone"}"
  for-downstream: yes
  for-upstream: yes
  fallback-enabled: no
"""
        else:
            data = '  local-zone: "test." static\n' + "".join(f'  local-data: "{r}"\n' for r in records)
        conf = self.folder / "unbound.conf"
        server = f"""server:
{interfaces}  access-control: 0.0.0.0/0 allow
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{self.folder}"
  pidfile: ""
  use-syslog: no
  verbosity: 0
  module-config: "iterator"
"""
        tail = "remote-control:\n  control-enable: no\n"
        if self.protective == "ztdns":  # the auth-zone clause ends the server clause: the local-zone goes first
            local, zone_clause = data.split("auth-zone:\n", 1)
            conf.write_text(server + local + tail + "auth-zone:\n" + zone_clause)
        else:
            conf.write_text(server + data + tail)
        process = subprocess.Popen(["ip", "netns", "exec", self.server, "unbound", "-d", "-c", str(conf)])
        self._wait_listening(port, process, "unbound")
        return process

    def _wait_listening(self, port: str, process: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if f":{port} " in self.in_ns(self.server, "ss", "-ltnH", f"sport = :{port}").stdout:
                return
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not start listening on port {port}")

    def start_ztdns(self) -> None:
        """The closed loop's protective resolver: ``ztdns serve``, DoT and DoH with mTLS, over an Unbound."""
        ztdns = (PYTHON, "-m", "ztdns", "pki")
        sh(*ztdns, "init", str(self.pki), "--name", "ztdns lab CA")
        sh(*ztdns, "issue", str(self.pki), "server", "--dns", "dns.test", "--ip", RESOLVER, "--server")
        sh(*ztdns, "issue", str(self.pki), "host", "--spiffe-id", HOST_ID, "--client")
        sh(*ztdns, "issue", str(self.pki), "guest", "--spiffe-id", GUEST_ID, "--client")
        self.unbound = self._unbound("  interface: 127.0.0.1@5300\n", CLOSED_LOOP_ZONE, "5300")
        listeners = "".join(
            f"""[[listen]]
transport = "{transport}"
address = "{RESOLVER}:{port}"
cert = "{self.pki / "server.crt"}"
key = "{self.pki / "server.key"}"
ca = "{self.pki / "ca.crt"}"
client_auth = "require"
"""
            for transport, port in (("dot", 853), ("doh", 443))
        )
        conf = self.folder / "ztdns.toml"
        conf.write_text(
            listeners
            + f"""
[resolver]
upstreams = [{{ address = "127.0.0.1:5300" }}]

[identities.host]
certificates = ["{HOST_ID}"]
policies = ["host"]

[identities.guest]
certificates = ["{GUEST_ID}"]
policies = ["guest"]

[unknown_clients]
action = "refuse"

[policies.host]
allow = ["allowed.test", "short.test", "refresh.test", "v6.test", "alias.test", "target.test", "sneaky.test",
         "cached.test", {{ pattern = "scoped.test", ports = ["tcp/8080"] }}]
deny = ["denied.test"]

[policies.guest]
allow = ["target.test"]

[dnssec]
validation = false  # the test zone is not signed

[log.query_log]
output = "off"

[metrics]
enabled = false
"""
        )
        self.serve = subprocess.Popen(
            ["ip", "netns", "exec", self.server, PYTHON, "-m", "ztdns", "serve", "--config", str(conf)],
            stderr=(self.folder / "ztdns.log").open("wb"),
        )
        for port in ("853", "443"):
            self._wait_listening(port, self.serve, f"ztdns serve ({(self.folder / 'ztdns.log').read_text()})")

    def stop_unbound(self) -> None:
        if self.unbound is not None:
            self.unbound.terminate()
            self.unbound.wait(10)
            self.unbound = None

    def teardown(self) -> None:
        for process in (self.echo, self.unbound, self.serve):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        for netns in (self.client, self.server, self.container):
            sh("ip", "netns", "del", netns, check=False)

    def config(self, folder: Path, extra: str = "", dead_server: bool = False, metrics: str = "", **top: str) -> Path:
        """An agent config with its state and resolv.conf inside ``folder`` (``dead_server``: one listed first)."""
        (folder / "resolv.conf").write_text("nameserver 192.0.2.99\n")
        lines = [f'{k} = "{v}"' for k, v in top.items()]
        text = (
            "\n".join(lines)
            + f"""
state_dir = "{folder / "state"}"
resolv_conf = "{folder / "resolv.conf"}"
identity = "spiffe://test/host"
{f'[[server]]{chr(10)}address = "{RESOLVER}:8853"{chr(10)}hostname = "dns.test"' if dead_server else ""}
[[server]]
address = "{RESOLVER}:853"
hostname = "dns.test"
[tls]
ca_file = "{self.folder / "ca.pem"}"
client_cert = "{self.folder / "client.pem"}"
client_key = "{self.folder / "client.key"}"
[allow]
ttl_floor = 0
grace = 1
[metrics]
address = "{metrics}"
{extra}
"""
        )
        path = folder / "agent.toml"
        path.write_text(text)
        return path

    def closed_loop_config(self, folder: Path, transport: str = "dot", extra: str = "") -> Path:
        """An agent config for the ``ztdns`` lab: the host's certificate, state and resolv.conf inside ``folder``."""
        (folder / "resolv.conf").write_text("nameserver 192.0.2.99\n")
        config = folder / "agent.toml"
        config.write_text(
            f"""identity = "{HOST_ID}"
state_dir = "{folder / "state"}"
resolv_conf = "{folder / "resolv.conf"}"
[[server]]
address = "{RESOLVER}:{853 if transport == "dot" else 443}"
hostname = "dns.test"
transport = "{transport}"
[tls]
ca_file = "{self.pki / "ca.crt"}"
client_cert = "{self.pki / "host.crt"}"
client_key = "{self.pki / "host.key"}"
[metrics]
address = ""
{extra}"""
        )
        return config

    def ztdns(self, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.in_ns(self.client, PYTHON, "-m", "ztdns", "agent", "--config", str(config), *args, check=check)

    def nft_json(self, *command: str) -> Any:
        result = self.in_ns(self.client, "nft", "-j", *command, check=False)
        try:
            return json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:  # nft 1.0.6 writes broken JSON for a dormant table's flags
            return None

    def set_timeouts(self, set_name: str = "allow4") -> dict[str, int]:
        data = self.nft_json("list", "set", "inet", "ztdns", set_name) or {"nftables": []}
        elements: dict[str, int] = {}
        for item in data["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                elements[elem["elem"]["val"]] = elem["elem"]["expires"]
        return elements


class AgentProcess:
    def __init__(self, lab: Lab, config: Path) -> None:
        self.lab = lab
        self.log = (config.parent / "agent.log").open("a")
        status = config.parent / "state" / "status.json"
        status.unlink(missing_ok=True)  # a killed agent leaves its last one behind
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", lab.client, PYTHON, "-m", "ztdns", "agent", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not status.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {(config.parent / 'agent.log').read_text()}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = Lab(tmp_path_factory.mktemp("lab"))
    try:
        built.build()
        yield built
    finally:
        built.teardown()


@pytest.fixture
def probe(lab: Lab) -> Iterator[Probe]:
    client = Probe(lab.client)
    yield client
    client.close()


@pytest.fixture
def agent_factory(lab: Lab) -> Iterator[list[AgentProcess]]:
    """Tests append the agents they start; all are killed and the table removed afterwards."""
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        agent.kill(signal.SIGTERM)
    lab.in_ns(lab.client, "nft", "delete", "table", "inet", "ztdns", check=False)
