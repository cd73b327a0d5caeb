"""Sinkhole and block-page answers (still with EDE 15) and per-identity rewrites, asked with dig from a real
`ztdns serve`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.server import ServerProcess
from fixtures.unbound import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)"),
]


def config(port: int) -> str:
    return f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[metrics]
enabled = false

[log.query_log]
output = "off"

[resolver]
mode = "none"

[identities.lo]
networks = ["127.0.0.1/32"]
policies = ["home"]

[identities.other]
networks = ["127.0.0.2/32"]
policies = ["sink"]

[policies.home]
allow = ["**.home.test", "blockpage.test"]
deny = ["ads.test", "**.ads.test"]
blocked_response = "cname"
block_cname = "blockpage.test"

[policies.home.rewrites]
"nas.home.test" = "192.168.1.10"
"v6.home.test" = ["192.168.1.11", "fd00::11"]
"files.home.test" = "nas.home.test"
"blockpage.test" = "192.168.1.1"

[policies.sink]
allow = ["**"]
deny = ["ads.test"]
blocked_response = "sinkhole"
sinkhole = ["0.0.0.0", "::"]
"""


def dig(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1", short: bool = True) -> str:
    command = ["dig", "+time=3", "+tries=1", "-b", source, "-p", str(port), "@127.0.0.1", name, rdtype]
    if short:
        command.insert(1, "+short")
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=20).stdout.strip()


def test_sinkholes_block_pages_and_rewrites(tmp_path: Path) -> None:
    port = free_port()
    with ServerProcess(config(port), tmp_path, port=port):
        # Rewrites: per identity, allowed, no EDE.
        assert dig(port, "nas.home.test") == "192.168.1.10"
        assert dig(port, "v6.home.test", "AAAA") == "fd00::11"
        assert dig(port, "files.home.test") == "nas.home.test."
        full = dig(port, "nas.home.test", short=False)
        assert "status: NOERROR" in full and "EDE" not in full
        # The other identity has no such rewrite: its sinkhole policy allows the name, nothing resolves it.
        assert "192.168.1.10" not in dig(port, "nas.home.test", source="127.0.0.2", short=False)
        # A block page: a CNAME to its name, still with EDE 15.
        blocked = dig(port, "www.ads.test", short=False)
        assert "status: NOERROR" in blocked and "CNAME\tblockpage.test." in blocked
        assert "EDE: 15 (Blocked)" in blocked and "rule=deny:**.ads.test" in blocked
        # A sinkhole: the addresses by query type, with EDE 15.
        assert dig(port, "ads.test", source="127.0.0.2") == "0.0.0.0"
        assert dig(port, "ads.test", "AAAA", source="127.0.0.2") == "::"
        sinkholed = dig(port, "ads.test", source="127.0.0.2", short=False)
        assert "EDE: 15 (Blocked)" in sinkholed
        # A sinkhole has no MX data: NODATA.
        assert dig(port, "ads.test", "MX", source="127.0.0.2") == ""
