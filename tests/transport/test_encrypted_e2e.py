"""Encrypted DNS end to end: `ztdns serve` in a subprocess, queried over DoT, DoH and DoQ by kdig, curl, dnspython
and ztdns itself, with SPIFFE identities from client certificates deciding policy."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from cryptography import x509

from fixtures.server import ServerProcess
from fixtures.tls import DEV_ID, PROD_ID, Pki, pki
from fixtures.tools import require_tool
from fixtures.unbound import free_port
from ztdns.resolver.encrypted import DoqUpstream, TlsClientSettings

__all__ = ["pki"]

EDGE_ID = "spiffe://corp.example/ns/edge/resolver"


@dataclass(frozen=True)
class Ports:
    dot: int  # client_auth = optional: certificate or network identity
    doh: int
    doq: int  # UDP
    require: int  # DoT, client_auth = require
    refuse: int  # DoT, client_auth = optional, no_certificate = refuse
    udp: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port(), free_port())


def tls_keys(pki: Pki, client_auth: str = "optional", cert: str = "server", **extra: str) -> str:
    lines = [
        f'cert = "{pki.cert(cert)}"',
        f'key = "{pki.key(cert)}"',
        f'ca = "{pki.ca}"',
        f'crl = ["{pki.crl}"]',
        f'client_auth = "{client_auth}"',
        *(f'{key} = "{value}"' for key, value in extra.items()),
    ]
    return "\n".join(lines)


# The core resolver: a local zone stands in for the world, identities by SPIFFE ID (exact and prefix) and address.
POLICY = """
[resolver]
mode = "none"

[identities.prod]
certificates = ["spiffe://corp.example/ns/prod/*"]
policies = ["prod"]

[identities.tool]
certificates = ["spiffe://corp.example/ns/dev/tool"]
policies = ["dev"]

[identities.edge]
certificates = ["spiffe://corp.example/ns/edge/resolver"]
policies = ["edge"]

[identities.office]
networks = ["127.0.0.1/32"]
policies = ["office"]

[unknown_clients]
action = "refuse"

[policies.prod]
allow = ["api.corp.test", "www.corp.test"]

[policies.dev]
allow = ["dev.corp.test", "www.corp.test"]

[policies.edge]
allow = ["**.corp.test"]
deny = ["secret.corp.test"]

[policies.office]
allow = ["www.corp.test"]

[[local_zones]]
name = "corp.test"
records = [
    "corp.test. 3600 IN SOA ns.corp.test. hostmaster.corp.test. 1 3600 600 86400 300",
    "www.corp.test. 300 IN A 127.0.0.1",
    "api.corp.test. 300 IN A 127.0.0.2",
    "dev.corp.test. 300 IN A 127.0.0.3",
    "secret.corp.test. 300 IN A 127.0.0.4",
]

[log.query_log]
output = "stdout"

[metrics]
enabled = false
"""


def core_config(pki: Pki, ports: Ports) -> str:
    return f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{ports.udp}"

[[listen]]
transport = "dot"
address = "127.0.0.1:{ports.dot}"
{tls_keys(pki)}

[[listen]]
transport = "doh"
address = "127.0.0.1:{ports.doh}"
{tls_keys(pki)}

[[listen]]
transport = "doq"
address = "127.0.0.1:{ports.doq}"
{tls_keys(pki)}

[[listen]]
transport = "dot"
address = "127.0.0.1:{ports.require}"
{tls_keys(pki, "require")}

[[listen]]
transport = "dot"
address = "127.0.0.1:{ports.refuse}"
{tls_keys(pki, no_certificate="refuse")}
{POLICY}"""


@pytest.fixture(scope="module")
def core(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Ports]]:
    ports = Ports.pick()
    server = ServerProcess(core_config(pki, ports), tmp_path_factory.mktemp("core"))
    server.start()
    yield server, ports
    assert server.stop() == 0, server.stderr


def run(*args: str) -> tuple[int, str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=False)
    return done.returncode, done.stdout + done.stderr


def kdig(pki: Pki, port: int, name: str, *, client: str | None = None, how: str = "+tls") -> tuple[int, str]:
    """kdig over DoT (+tls) or DoH (+https), with the client certificate of ``client`` if given."""
    args = [require_tool("kdig"), "@127.0.0.1", "-p", str(port), how, f"+tls-ca={pki.ca}", "+tls-hostname=dns.test"]
    if client is not None:
        args += [f"+tls-certfile={pki.cert(client)}", f"+tls-keyfile={pki.key(client)}"]
    return run(*args, "+edns", name, "A")


def status(out: str) -> str:
    found = re.search(r"status: ([A-Z]+)", out)
    assert found is not None, f"no answer in kdig output:\n{out}"
    return found.group(1)


def answered(out: str, address: str) -> bool:
    return status(out) == "NOERROR" and f"A\t{address}" in out


def logged(server: ServerProcess, transport: str, expected: int) -> list[dict[str, object]]:
    """The query log lines of ``transport``, waiting until there are at least ``expected`` of them."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log_lines(0) if line["transport"] == transport]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# Who may resolve what: SPIFFE prefix (prod), SPIFFE exact (dev/tool), no certificate (address: office).
CASES = [
    ("prod", "api.corp.test", "127.0.0.2"),
    ("prod", "dev.corp.test", None),
    ("dev", "dev.corp.test", "127.0.0.3"),
    ("dev", "api.corp.test", None),
    (None, "www.corp.test", "127.0.0.1"),
    (None, "api.corp.test", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["+tls", "+https"])
def test_kdig_allowed_and_denied_per_spiffe_identity(core: tuple[ServerProcess, Ports], pki: Pki, how: str) -> None:
    server, ports = core
    port = ports.dot if how == "+tls" else ports.doh
    for client, name, address in CASES:
        code, out = kdig(pki, port, name, client=client, how=how)
        assert code == 0, out
        if address is not None:
            assert answered(out, address), (client, name, out)
        else:
            assert status(out) == "NXDOMAIN" and "EDE: 15" in out, (client, name, out)
    transport = "dot" if how == "+tls" else "doh"
    lines = logged(server, transport, len(CASES))
    by_name = {(line["certificate"], line["qname"]): line for line in lines}
    line = by_name[(PROD_ID, "api.corp.test.")]
    assert line["identity"] == "prod" and line["decision"] == "allow" and line["policy"] == "prod"
    line = by_name[(DEV_ID, "api.corp.test.")]
    assert line["identity"] == "tool" and line["decision"] == "deny"
    assert by_name[(None, "www.corp.test.")]["identity"] == "office"


@pytest.mark.slow
def test_curl_doh_url_resolves_only_what_the_policy_allows(core: tuple[ServerProcess, Ports], pki: Pki) -> None:
    curl = require_tool("curl")
    server, ports = core
    # Nothing listens on the target port: curl resolves the name over DoH, then fails to connect (exit 7), or
    # fails to resolve (exit 6). No client certificate: the office identity (by address) applies.
    closed = free_port()
    doh = f"https://localhost:{ports.doh}/dns-query"
    common = [curl, "-sS", "--cacert", str(pki.ca), "--doh-url", doh, "--connect-timeout", "2", "-o", "/dev/null"]
    code, out = run(*common, f"http://www.corp.test:{closed}/")
    assert code == 7, out  # resolved to 127.0.0.1, connection refused
    code, out = run(*common, f"http://api.corp.test:{closed}/")
    assert code == 6, out  # could not resolve host: NXDOMAIN from policy, as the query log says
    time.sleep(0.2)  # the log writer flushes every 50 ms
    denied = [
        line for line in logged(server, "doh", 1) if line["qname"] == "api.corp.test." and line["identity"] == "office"
    ]
    assert denied and all(line["decision"] == "deny" and line["rcode"] == "NXDOMAIN" for line in denied)


def doq_query(pki: Pki, port: int, name: str, client: str | None) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    if client is None:
        # dnspython's own DoQ client (it has no client certificate option).
        return dns.query.quic(query, "127.0.0.1", port=port, timeout=5, verify=str(pki.ca), server_hostname="dns.test")

    async def with_certificate() -> bytes:
        upstream = DoqUpstream(
            "127.0.0.1", port, TlsClientSettings("dns.test", pki.ca, cert=pki.cert(client), key=pki.key(client))
        )
        try:
            return await upstream.query(query.to_wire(), 5)
        finally:
            await upstream.close()

    return dns.message.from_wire(asyncio.run(with_certificate()))


def ede(response: dns.message.Message) -> int | None:
    codes = [int(option.code) for option in response.options if isinstance(option, dns.edns.EDEOption)]
    return codes[0] if codes else None


@pytest.mark.slow
def test_doq_allowed_and_denied_per_spiffe_identity(core: tuple[ServerProcess, Ports], pki: Pki) -> None:
    server, ports = core
    for client, name, address in CASES:
        response = doq_query(pki, ports.doq, name, client)
        if address is not None:
            assert response.rcode() == dns.rcode.NOERROR and response.answer[0][0].to_text() == address
        else:
            assert response.rcode() == dns.rcode.NXDOMAIN and ede(response) == 15, (client, name)
    lines = logged(server, "doq", len(CASES))
    assert {(line["certificate"], line["identity"]) for line in lines} == {
        (PROD_ID, "prod"),
        (DEV_ID, "tool"),
        (None, "office"),
    }


@pytest.mark.slow
def test_require_without_certificate_fails_the_handshake(core: tuple[ServerProcess, Ports], pki: Pki) -> None:
    server, ports = core
    code, out = kdig(pki, ports.require, "www.corp.test")
    assert code != 0 and "status:" not in out, out
    code, out = kdig(pki, ports.require, "api.corp.test", client="prod")
    assert code == 0 and answered(out, "127.0.0.2"), out
    assert server.wait_stderr(f"dot 127.0.0.1:{ports.require}: handshake refused")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("client", "logged"),
    [
        ("expired", "certificate has expired"),
        ("stranger", "unable to get local issuer certificate"),
        ("revoked", "certificate revoked"),
    ],
)
def test_bad_certificates_are_refused_and_logged(
    core: tuple[ServerProcess, Ports], pki: Pki, client: str, logged: str
) -> None:
    server, ports = core
    for port in (ports.dot, ports.doh):  # optional mode still refuses a certificate that does not verify
        code, out = kdig(pki, port, "www.corp.test", client=client, how="+tls" if port == ports.dot else "+https")
        assert code != 0 and "status:" not in out, out
    with pytest.raises(Exception):  # noqa: B017 - aioquic reports the closed connection in several ways
        doq_query(pki, ports.doq, "www.corp.test", client)
    assert server.wait_stderr(logged), server.stderr


@pytest.mark.slow
def test_no_certificate_refuse_gives_ede_18_whatever_the_address(core: tuple[ServerProcess, Ports], pki: Pki) -> None:
    server, ports = core
    for _ in range(2):  # the second time too: refusals without a certificate are not replayed as "unknown client"
        code, out = kdig(pki, ports.refuse, "www.corp.test")  # 127.0.0.1 would be "office" elsewhere
        assert code == 0 and status(out) == "REFUSED" and "EDE: 18" in out, out
        assert "no client certificate" in out, out
    code, out = kdig(pki, ports.refuse, "api.corp.test", client="prod")
    assert answered(out, "127.0.0.2"), out
    time.sleep(0.2)  # the log writer flushes every 50 ms
    lines = [line for line in logged(server, "dot", 1) if line["qname"] == "www.corp.test."]
    assert any(line["decision"] == "refuse" and line["identity"] is None for line in lines)


def dot_exchange(sock: ssl.SSLSocket, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    wire = query.to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    (length,) = struct.unpack("!H", _read(sock, 2))
    return dns.message.from_wire(_read(sock, length))


def _read(sock: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def dot_connect(pki: Pki, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["dot"])
    context.load_cert_chain(pki.cert("prod"), pki.key("prod"))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="dns.test")


def serial_of(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.slow
def test_rotation_on_disk_and_sighup(pki: Pki, tmp_path: Path) -> None:
    """Two DoT listeners share certificate files: one polls them, one only reloads on SIGHUP."""
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server", "server2"):
        for suffix in ("crt", "key"):
            shutil.copy(pki.dir / f"{name}.{suffix}", live / f"{name}.{suffix}")
    shutil.copy(live / "server.crt", live / "current.crt")
    shutil.copy(live / "server.key", live / "current.key")
    polled, signalled = free_port(), free_port()
    keys = f"""cert = "{live / "current.crt"}"
key = "{live / "current.key"}"
ca = "{pki.ca}"
client_auth = "require"
"""
    config = f"""
[[listen]]
transport = "dot"
address = "127.0.0.1:{polled}"
tls_reload_interval = 0.2
idle_timeout = 60
{keys}
[[listen]]
transport = "dot"
address = "127.0.0.1:{signalled}"
tls_reload_interval = 3600
{keys}
{POLICY}"""
    old_serial = x509.load_pem_x509_certificate((live / "server.crt").read_bytes()).serial_number
    new_serial = x509.load_pem_x509_certificate((live / "server2.crt").read_bytes()).serial_number
    with ServerProcess(config, tmp_path) as server:
        pipelined = dot_connect(pki, polled)
        assert serial_of(pipelined) == old_serial
        assert dot_exchange(pipelined, "api.corp.test").answer[0][0].to_text() == "127.0.0.2"
        # Rotate: key first would leave a mismatched pair for a moment (the reload keeps the old material then).
        shutil.copy(live / "server2.key", live / "current.key")
        shutil.copy(live / "server2.crt", live / "current.crt")
        assert server.wait_stderr("TLS material reloaded (generation 2)"), server.stderr
        # The open connection keeps working, pipelined: several queries before reading any answer.
        for name in ("api.corp.test", "www.corp.test"):
            wire = dns.message.make_query(name, "A").to_wire()
            pipelined.sendall(struct.pack("!H", len(wire)) + wire)
        answers = set()
        for _ in range(2):
            (length,) = struct.unpack("!H", _read(pipelined, 2))
            answers.add(dns.message.from_wire(_read(pipelined, length)).answer[0][0].to_text())
        assert answers == {"127.0.0.1", "127.0.0.2"}
        assert serial_of(pipelined) == old_serial
        pipelined.close()
        with dot_connect(pki, polled) as fresh:
            assert serial_of(fresh) == new_serial
            assert dot_exchange(fresh, "www.corp.test").rcode() == dns.rcode.NOERROR
        # The SIGHUP-only listener still serves the old certificate until the signal.
        with dot_connect(pki, signalled) as before:
            assert serial_of(before) == old_serial
        server.signal(signal.SIGHUP)
        assert server.wait_stderr("reloaded"), server.stderr
        deadline = time.monotonic() + 5
        while True:
            with dot_connect(pki, signalled) as after:
                if serial_of(after) == new_serial or time.monotonic() > deadline:
                    assert serial_of(after) == new_serial
                    break
            time.sleep(0.1)
        # A broken file keeps the previous material: the listener goes on serving.
        (live / "current.crt").write_text("not a certificate")
        assert server.wait_stderr("TLS material not reloaded"), server.stderr
        with dot_connect(pki, polled) as still:
            assert serial_of(still) == new_serial


@pytest.mark.slow
def test_chained_resolvers_identify_the_edge_by_spiffe_id(pki: Pki, tmp_path: Path) -> None:
    """edge (UDP for its clients) forwards over DoT with its own SVID to core, whose policy names the edge."""
    edge_pki = tmp_path / "edge-pki"
    shutil.copytree(pki.dir, edge_pki, ignore=shutil.ignore_patterns("other"))
    code, out = run(
        sys.executable, "-m", "ztdns", "pki", "issue", str(edge_pki), "edge", "--client", "--spiffe-id", EDGE_ID
    )
    assert code == 0, out
    core_port, edge_port = free_port(), free_port()
    core_text = f"""
[[listen]]
transport = "dot"
address = "127.0.0.1:{core_port}"
{tls_keys(pki, "require")}
{POLICY}"""
    edge_text = f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{edge_port}"

[resolver]
timeout = 1.0

[dnssec]
validation = false  # the core serves an unsigned local zone

[[resolver.upstreams]]
transport = "dot"
address = "127.0.0.1:{core_port}"
server_name = "dns.test"
ca = "{pki.ca}"
cert = "{edge_pki / "edge.crt"}"
key = "{edge_pki / "edge.key"}"

[identities.loopback]
networks = ["127.0.0.0/8"]
policies = ["all"]

[policies.all]
allow = ["**"]

[log.query_log]
output = "stdout"

[metrics]
enabled = false
"""
    (tmp_path / "core").mkdir()
    (tmp_path / "edge").mkdir()
    with ServerProcess(core_text, tmp_path / "core") as core, ServerProcess(edge_text, tmp_path / "edge") as edge:
        query = dns.message.make_query("api.corp.test", "A")
        response = dns.query.udp(query, "127.0.0.1", port=edge_port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR and response.answer[0][0].to_text() == "127.0.0.2"
        response = dns.query.udp(dns.message.make_query("secret.corp.test", "A"), "127.0.0.1", port=edge_port)
        assert response.rcode() == dns.rcode.NXDOMAIN  # denied at the core for the edge identity
        core_lines = core.log_lines(2)
        assert [(line["certificate"], line["identity"], line["decision"]) for line in core_lines] == [
            (EDGE_ID, "edge", "allow"),
            (EDGE_ID, "edge", "deny"),
        ]
        edge_lines = edge.log_lines(2)
        assert edge_lines[0]["upstream"] == f"tls://127.0.0.1:{core_port}"


SSLYZE = Path(__file__).resolve().parents[2] / ".venv-sslyze" / "bin" / "sslyze"
SCAN = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--elliptic_curves"]
SCAN += ["--heartbleed", "--openssl_ccs", "--robot", "--compression", "--reneg", "--mozilla_config", "disable"]
OLD_PROTOCOLS = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")
# The only TLS 1.2 suites a scan may find: ECDHE key exchange (forward secrecy) with an AEAD cipher. Static RSA,
# CBC, NULL, EXPORT, RC4 and 3DES suites cannot match.
STRONG_TLS12 = re.compile(r"TLS_ECDHE_(ECDSA|RSA)_WITH_(AES_(128|256)_GCM|CHACHA20_POLY1305)_SHA(256|384)")
STRONG_CURVES = {"X25519", "X448", "secp256r1", "secp384r1", "secp521r1"}  # 224 bits and less would be weak


@dataclass(frozen=True)
class ScanTargets:
    dot12: int  # tls_min_version = "1.2", client_auth = "optional" (the development default)
    doh12: int
    dot13: int  # tls_min_version = "1.3", client_auth = "off"
    doh13: int
    dot_require: int  # tls_min_version = "1.2", client_auth = "require"
    doh_require: int


def scan_config(pki: Pki, targets: ScanTargets) -> str:
    listeners = [
        ("dot", targets.dot12, tls_keys(pki, tls_min_version="1.2")),
        ("doh", targets.doh12, tls_keys(pki, tls_min_version="1.2")),
        ("dot", targets.dot13, tls_keys(pki, "off")),
        ("doh", targets.doh13, tls_keys(pki, "off")),
        ("dot", targets.dot_require, tls_keys(pki, "require", tls_min_version="1.2")),
        ("doh", targets.doh_require, tls_keys(pki, "require", tls_min_version="1.2")),
    ]
    sections = [
        f'[[listen]]\ntransport = "{kind}"\naddress = "127.0.0.1:{port}"\n{keys}' for kind, port, keys in listeners
    ]
    return "\n\n".join(sections) + POLICY


def start_sslyze(out: Path, ports: list[int], *options: str) -> subprocess.Popen[bytes]:
    targets = [f"127.0.0.1:{port}" for port in ports]
    command = [str(SSLYZE), *SCAN, *options, "--quiet", "--json_out", str(out), *targets]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def scan_results(process: subprocess.Popen[bytes], out: Path) -> dict[int, dict[str, Any]]:
    """sslyze's JSON results by port, once the scan has finished."""
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()
    report = json.loads(out.read_text())
    return {result["server_location"]["port"]: result for result in report["server_scan_results"]}


def accepted(scan: dict[str, Any], protocol: str) -> list[str]:
    return [
        suite["cipher_suite"]["name"] for suite in scan[f"{protocol}_cipher_suites"]["result"]["accepted_cipher_suites"]
    ]


def assert_nothing_weak(result: dict[str, Any], tls_min_version: str) -> None:
    where = f"port {result['server_location']['port']}"
    assert result["connectivity_status"] == "COMPLETED", result["connectivity_error_trace"]
    scan = result["scan_result"]
    failed = {name: command["error_trace"] for name, command in scan.items() if command["status"] == "ERROR"}
    assert not failed, (where, failed)
    for old in OLD_PROTOCOLS:
        assert not scan[f"{old}_cipher_suites"]["result"]["is_tls_version_supported"], (where, old)
        assert accepted(scan, old) == [], (where, old)
    tls12 = accepted(scan, "tls_1_2")
    if tls_min_version == "1.2":
        assert tls12, where
        assert [name for name in tls12 if not STRONG_TLS12.fullmatch(name)] == [], where
    else:
        assert tls12 == [], where
        assert not scan["tls_1_2_cipher_suites"]["result"]["is_tls_version_supported"], where
    assert accepted(scan, "tls_1_3"), where  # every TLS 1.3 suite is AEAD with (EC)DHE
    curves = {curve["name"] for curve in scan["elliptic_curves"]["result"]["supported_curves"]}
    assert curves and curves <= STRONG_CURVES, (where, curves)
    assert not scan["heartbleed"]["result"]["is_vulnerable_to_heartbleed"], where
    assert not scan["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"], where
    assert scan["robot"]["result"]["robot_result"].startswith("NOT_VULNERABLE"), where
    assert not scan["tls_compression"]["result"]["supports_compression"], where
    assert not scan["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"], where


@pytest.mark.slow
def test_sslyze_finds_no_old_protocol_and_no_weak_suite(pki: Pki, tmp_path: Path) -> None:
    """sslyze (its own venv, .venv-sslyze: it needs an older cryptography than ours) scans the real DoT and DoH
    listeners of ``ztdns serve`` with each tls_min_version and client_auth mode."""
    if not SSLYZE.exists():
        pytest.skip(f"{SSLYZE} is missing (`bash scripts/dev.sh setup` installs tools/sslyze/requirements.lock)")
    targets = ScanTargets(*(free_port() for _ in range(6)))
    required = [targets.dot_require, targets.doh_require]
    with ServerProcess(scan_config(pki, targets), tmp_path) as server:
        # Both scans at once: a scan's time is mostly sslyze waiting on optional client authentication probes.
        anonymous = start_sslyze(tmp_path / "anonymous.json", [*astuple(targets)])
        with_certificate = start_sslyze(
            tmp_path / "certificate.json", required, "--cert", str(pki.cert("prod")), "--key", str(pki.key("prod"))
        )
        results = scan_results(anonymous, tmp_path / "anonymous.json")
        certified = scan_results(with_certificate, tmp_path / "certificate.json")
    for port in (targets.dot12, targets.doh12):
        assert results[port]["connectivity_result"]["client_auth_requirement"] == "OPTIONAL"
        assert_nothing_weak(results[port], "1.2")
    for port in (targets.dot13, targets.doh13):
        assert results[port]["connectivity_result"]["client_auth_requirement"] == "DISABLED"
        assert_nothing_weak(results[port], "1.3")
    for port in required:
        # With the client certificate, sslyze sees everything the listener offers.
        assert_nothing_weak(certified[port], "1.2")
        # Without one sslyze sees "client authentication required": the memory-BIO TLS layer sends the
        # certificate_required alert before it closes (transport/tlsbio.py).
        anonymous_result = results[port]
        assert anonymous_result["connectivity_status"] == "COMPLETED", anonymous_result
        assert anonymous_result["connectivity_result"]["client_auth_requirement"] == "REQUIRED"
        # Logged on its own line, or counted in the listener's summary when the scan's other probes came first
        # (a listener logs five refusals per 10 s in detail).
        refused = "TLS error: PEER_DID_NOT_RETURN_A_CERTIFICATE"
        assert re.search(
            rf"127\.0\.0\.1:{port}: (handshake refused: {refused}\"?$|\d+ more handshakes refused: .*{refused} x\d+)",
            server.stderr,
            re.MULTILINE,
        ), server.stderr


def test_no_certificate_refuse_needs_optional_client_auth(pki: Pki) -> None:
    from pydantic import ValidationError

    from fixtures.tls import listen_config

    assert listen_config(pki, "dot", client_auth="optional", no_certificate="refuse").no_certificate == "refuse"
    for client_auth in ("require", "off"):
        with pytest.raises(ValidationError, match="only applies with client_auth = 'optional'"):
            listen_config(pki, "dot", client_auth=client_auth, no_certificate="refuse")
