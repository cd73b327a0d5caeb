"""RPZ-IP triggers on the response path: answers holding a listed address are blocked, cache hits included."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.server import ServerProcess
from fixtures.unbound import UnboundFactory, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)"),
]

RPZ = """\
$TTL 300
$ORIGIN rpz.test.
@ SOA ns.rpz.test. hostmaster.rpz.test. 1 3600 600 86400 60
@ NS ns.rpz.test.
24.0.2.0.192.rpz-ip CNAME .
32.7.2.0.192.rpz-ip CNAME rpz-passthru.
"""


def dig(port: int, name: str) -> str:
    command = ["dig", "+time=3", "+tries=1", "-p", str(port), "@127.0.0.1", name, "A"]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=20).stdout


def test_listed_answer_addresses_are_blocked_on_misses_and_hits(
    tmp_path: Path, unbound_upstream: UnboundFactory
) -> None:
    upstream = unbound_upstream(
        [
            "bad.test. 300 IN A 192.0.2.66",
            "exempt.test. 300 IN A 192.0.2.7",
            "good.test. 300 IN A 198.51.100.1",
        ]
    )
    (tmp_path / "ip.rpz").write_text(RPZ)
    port = free_port()
    config = f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[metrics]
enabled = false

[log.query_log]
output = "off"

[resolver]
upstreams = [{{ address = "{upstream}" }}]

[dnssec]
validation = false  # the upstream serves unsigned private names

[identities.lo]
networks = ["127.0.0.1/32"]
policies = ["p"]

[policies.p]
allow = ["**"]
deny_lists = ["ip.rpz"]
"""
    with ServerProcess(config, tmp_path, port=port):
        for _ in range(2):  # a miss, then a cache hit: both blocked
            answer = dig(port, "bad.test")
            assert "status: NXDOMAIN" in answer and "192.0.2.66" not in answer, answer
            assert "EDE: 15 (Blocked)" in answer and "rule=deny:rpz-ip:192.0.2.0/24 list=ip.rpz" in answer
            assert "192.0.2.7" in dig(port, "exempt.test")  # a longer PASSTHRU prefix exempts it
            good = dig(port, "good.test")
            assert "198.51.100.1" in good and "EDE" not in good
