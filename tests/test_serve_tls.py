"""Encrypted listeners through the real server (uvloop, the daemon's wiring), not a test event loop."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from fixtures.server import ServerProcess
from fixtures.unbound import free_port


def make_pki(directory: Path) -> None:
    def pki(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "ztdns", "pki", *args], check=True, capture_output=True)

    pki("init", str(directory))
    pki("issue", str(directory), "server", "--server", "--dns", "localhost", "--ip", "127.0.0.1")
    pki("issue", str(directory), "client", "--client", "--spiffe-id", "spiffe://test.example/ns/prod/sa/web")


def test_every_dot_handshake_completes(tmp_path: Path) -> None:
    """Regression: with start_tls on an accepted plain transport, uvloop lost early ClientHellos (~40 % stalled)."""
    make_pki(tmp_path / "pki")
    port = free_port()
    config = f"""
[[listen]]
transport = "dot"
address = "127.0.0.1:{port}"
cert = "pki/server.crt"
key = "pki/server.key"
ca = "pki/ca.crt"
client_auth = "require"

[resolver]
mode = "none"

[identities.web]
certificates = ["spiffe://test.example/ns/prod/*"]
policies = ["web"]

[policies.web]
allow = ["**.ztdns.test"]

[[local_zones]]
name = "ztdns.test"
records = ["ztdns.test. 3600 IN SOA ns.ztdns.test. h.ztdns.test. 1 3600 600 86400 300",
           "www.ztdns.test. 300 IN A 192.0.2.1"]

[log.query_log]
output = "stdout"

[metrics]
enabled = false
"""
    context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
    context.load_cert_chain(tmp_path / "pki" / "client.crt", tmp_path / "pki" / "client.key")
    with ServerProcess(config, tmp_path, port=port) as server:
        for _ in range(25):  # a fresh connection and handshake each time
            query = dns.message.make_query("www.ztdns.test", "A")
            response = dns.query.tls(
                query, "127.0.0.1", port=port, timeout=2, ssl_context=context, server_hostname="localhost"
            )
            assert response.rcode() == dns.rcode.NOERROR
        line = server.log_lines(1)[0]
        assert line["identity"] == "web" and line["transport"] == "dot"
