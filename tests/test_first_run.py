"""What a first-time operator meets (issue 13, items 6-9): one-line CLI errors instead of tracebacks, `ztdns check`
knowing what `serve` would reject, workers that fail loudly, and the commands of README/docs working as written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from fixtures.server import ServerProcess
from fixtures.tools import require_tool
from fixtures.unbound import free_port
from ztdns.client import ClientInfo, Transport
from ztdns.config import default_config
from ztdns.identity import IdentityMap
from ztdns.policy import compile_views

# Nearly every test here runs the `ztdns` command as a process.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples"
EXPLAIN = (sys.executable, "-m", "ztdns", "explain", "--config", str(EXAMPLES / "office.toml"))


def ztdns(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztdns", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


def test_pki_issue_with_negative_days_is_a_usage_error(tmp_path: Path) -> None:
    assert ztdns("pki", "init", str(tmp_path)).returncode == 0
    error = one_line_error(ztdns("pki", "issue", str(tmp_path), "web", "--days", "-1"))
    assert error.endswith("argument --days: -1 is not positive")


def test_explain_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`ztdns explain … | head`: the reader goes away before ztdns writes. No BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [*EXPLAIN, "--client", "10.1.2.3", "www.example.com"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and result.returncode == 128 + signal.SIGPIPE


def test_check_recognises_an_agent_config() -> None:
    error = one_line_error(ztdns("check", "--config", str(EXAMPLES / "agent.toml")))
    assert "this is an agent configuration" in error and "ztdns agent check --config" in error
    assert "unknown key" not in error


def test_agent_sub_commands_take_config_after_the_sub_command() -> None:
    """docs/agent.md writes `ztdns agent check --config FILE`; the form with --config first works too."""
    after = ztdns("agent", "check", "--config", str(EXAMPLES / "agent.toml"))
    before = ztdns("agent", "--config", str(EXAMPLES / "agent.toml"), "check")
    assert after.returncode == 0 and after.stdout == before.stdout and "table inet ztdns" in after.stdout


def test_check_names_the_missing_ca_file_of_an_upstream(tmp_path: Path) -> None:
    config = tmp_path / "upstream.toml"
    config.write_text(
        "[resolver]\nmode = 'forward'\n\n[[resolver.upstreams]]\naddress = '127.0.0.1:853'\ntransport = 'dot'\n"
        "ca = 'missing-ca.pem'\n\n[metrics]\nenabled = false\n"
    )
    error = one_line_error(ztdns("check", "--config", str(config)))
    assert error.startswith(f"{config}:7: resolver.upstreams[0].ca: ") and "missing-ca.pem" in error


LOCAL_ZONE = """
[resolver]
mode = "none"

[metrics]
enabled = false

[[local_zones]]
name = "corp.test"
records = [
    "corp.test. 300 IN SOA ns.corp.test. hostmaster.corp.test. 1 3600 600 86400 300",
    "www.corp.test. 300 IN A 192.0.2.1",
    {extra}
]
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('"www.other.test. 300 IN A 192.0.2.2",', ":13: local_zones[0].records[2]: the record is outside the zone"),
        ('"bad.corp.test. 300 IN A 999.1.1.1",', ":13: local_zones[0].records[2]: "),
    ],
)
def test_local_zone_errors_name_the_record(tmp_path: Path, extra: str, expected: str) -> None:
    config = tmp_path / "zone.toml"
    config.write_text(LOCAL_ZONE.format(extra=extra))
    error = one_line_error(ztdns("check", "--config", str(config)))
    assert error.startswith(f"{config}{expected}"), error
    assert "<string>" not in error


def test_zone_file_errors_name_the_file_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "corp.zone").write_text(
        "$ORIGIN corp.test.\n@ 300 IN SOA ns hostmaster 1 3600 600 86400 300\nwww 300 IN A 192.0.2.1\n"
        "sub 300 IN A 300.1.1.1\n"
    )
    config = tmp_path / "zone.toml"
    config.write_text("[resolver]\nmode = 'none'\n\n[[local_zones]]\nname = 'corp.test'\nfile = 'corp.zone'\n")
    error = one_line_error(ztdns("check", "--config", str(config)))
    assert error.startswith(f"{config}:6: local_zones[0].file: {tmp_path / 'corp.zone'}:"), error
    (tmp_path / "corp.zone").write_text(
        "$ORIGIN corp.test.\n@ 300 IN SOA ns hostmaster 1 3600 600 86400 300\nwww.other.test. 300 IN A 192.0.2.1\n"
    )
    error = one_line_error(ztdns("check", "--config", str(config)))
    assert "records outside the zone corp.test.: www.other.test." in error


def test_default_metrics_port_in_use_names_the_default_not_a_question_mark(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = free_port()
    config = f"[[listen]]\ntransport = 'udp'\naddress = '127.0.0.1:{port}'\n\n[resolver]\nmode = 'none'\n"
    config += f"\n[metrics]\naddress = '127.0.0.1:{taken.getsockname()[1]}'\n"
    path = tmp_path / "metrics.toml"
    path.write_text(config)
    try:
        error = one_line_error(ztdns("serve", "--config", str(path)))
    finally:
        taken.close()
    assert ":?:" not in error and "metrics.address: cannot serve metrics" in error
    path.write_text(f"[[listen]]\ntransport = 'udp'\naddress = '127.0.0.1:{port}'\n\n[resolver]\nmode = 'none'\n")
    from ztdns.config import load_config, located

    unset = str(located(load_config(path), ("metrics", "address"), "problem"))
    assert unset == f"{path}: metrics.address (not set in the file: the default): problem"


def test_workers_with_doq_serve_and_a_dying_worker_stops_the_server(tmp_path: Path) -> None:
    """DoQ runs on worker 0 only (QUIC cannot share a port); a worker that cannot bind takes the server down with
    one line, instead of a traceback and a server silently serving at half strength."""
    assert ztdns("pki", "init", str(tmp_path / "pki")).returncode == 0
    assert ztdns("pki", "issue", str(tmp_path / "pki"), "server", "--dns", "localhost").returncode == 0
    port = quic = free_port()
    while quic == port:  # a port just closed may be handed out again
        quic = free_port()
    config = f"""
[server]
workers = 2

[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[[listen]]
transport = "doq"
address = "127.0.0.1:{quic}"
cert = "pki/server.crt"
key = "pki/server.key"

[resolver]
mode = "none"

[metrics]
enabled = false
"""
    server = ServerProcess(config, tmp_path, name="w.toml").start(wait_for="listening on doq")
    try:
        time.sleep(1.0)  # worker 1 would have died by now
        assert server.proc is not None and server.proc.poll() is None
        assert "Traceback" not in server.stderr
    finally:
        assert server.stop() == 0
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))  # no SO_REUSEPORT: every worker's bind fails
    try:
        result = ztdns("serve", "--config", str(tmp_path / "w.toml"), timeout=30)
    finally:
        blocker.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot listen on udp" in result.stderr and "stopping the server" in result.stderr


def test_default_config_shows_certificate_identities_for_real() -> None:
    """The development client certificate makes a client `dev-client`, whose policy differs from loopback's."""
    config = default_config()
    identities, views = IdentityMap(config), dict(compile_views(config))
    plain = identities.match(ClientInfo(Transport.DOT, "127.0.0.1", 4000))
    certified = identities.match(
        ClientInfo(Transport.DOT, "127.0.0.1", 4000, certificate_identity="spiffe://ztdns.test/dev/client")
    )
    assert plain is not None and certified is not None
    assert (plain.identity, certified.identity) == ("loopback", "dev-client")
    assert not views[plain.identity].decide("workload.ztdns.test", 1).allowed
    assert views[certified.identity].decide("workload.ztdns.test", 1).allowed
    assert not views[certified.identity].decide("www.blocked.ztdns.test", 1).allowed


def test_docs_lab_cli_walkthrough(tmp_path: Path) -> None:
    """docs/lab.md: `ztdns lab --port` and `ztdns serve` with the lab's hints and anchor, as written there."""
    require_tool("knotd")
    docs = (Path(__file__).parent.parent / "docs" / "lab.md").read_text()
    toml = docs.split("From the command line", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    lab_port, serve_port = free_port(), free_port()
    toml = toml.replace("5390", str(lab_port)).replace("5399", str(serve_port))
    lab = subprocess.Popen(
        [sys.executable, "-m", "ztdns", "lab", "--dir", str(tmp_path), "--port", str(lab_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert lab.stdout is not None
        assert "lab running" in lab.stdout.readline()
        with ServerProcess(toml, tmp_path, name="lab.toml"):
            query = dns.message.make_query("www.secure.lab", "A", want_dnssec=True)
            secure = dns.query.udp(query, "127.0.0.1", port=serve_port, timeout=5)
            assert secure.rcode() == dns.rcode.NOERROR and secure.flags & dns.flags.AD
            bogus = dns.query.udp(dns.message.make_query("www.bogus.lab", "A"), "127.0.0.1", port=serve_port, timeout=5)
            assert bogus.rcode() == dns.rcode.SERVFAIL
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(20)
