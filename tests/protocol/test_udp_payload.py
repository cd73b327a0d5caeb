"""``server.max_udp_payload``: the largest UDP answer sent to clients, whatever EDNS payload size they offer
(Unbound's max-udp-size). Asked with dig +bufsize, the first time (the pipeline) and the second (a replay)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.hostile import server_config
from fixtures.server import ServerProcess
from fixtures.tools import require_tool
from fixtures.unbound import free_port

pytestmark = pytest.mark.slow

# 40 TXT records of about 40 bytes: an answer of about 1,900 bytes, above 1232 and below 4096.
RECORDS = ",\n".join(f'    "big.corp.example. 600 IN TXT \\"record {i:02d} {"x" * 24}\\""' for i in range(40))
LOCAL_ZONE = f"""
[[local_zones]]
name = "corp.example"
records = [
    "corp.example. 3600 IN SOA ns.corp.example. hostmaster.corp.example. 1 3600 600 86400 60",
{RECORDS},
]
"""


def serve(tmp_path: Path, server_section: str) -> Iterator[ServerProcess]:
    port = free_port()
    # The upstream is never asked: every question here is the local zone's.
    text = server_section + server_config(port, "127.0.0.1:9", extra=LOCAL_ZONE)
    process = ServerProcess(text, tmp_path, port=port)
    process.start()
    yield process
    assert process.stop() == 0, process.stderr


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from serve(tmp_path, "")


@pytest.fixture
def large_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from serve(tmp_path, "[server]\nmax_udp_payload = 4096\n")


def dig_udp(port: int, bufsize: int) -> str:
    """dig's reply over UDP only (+ignore: a truncated answer is shown, not retried over TCP)."""
    dig = require_tool("dig")
    command = [dig, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", "+ignore", f"+bufsize={bufsize}"]
    return subprocess.run(
        [*command, "big.corp.example", "TXT"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def flags_of(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if ";; flags:" in line)
    return line.split(";; flags:")[1].split(";")[0].split()


def udp_size_of(out: str) -> int:
    line = next(line for line in out.splitlines() if "; EDNS:" in line)
    return int(line.rsplit("udp:", 1)[1].strip())


def test_default_caps_client_payload_at_1232(default_server: ServerProcess) -> None:
    for _ in range(2):  # the pipeline, then the replay
        out = dig_udp(default_server.port, 4096)
        assert "tc" in flags_of(out), out
        assert "record 00" not in out
        assert udp_size_of(out) == 1232
    small = dig_udp(default_server.port, 1232)
    assert "tc" in flags_of(small)


def test_raised_limit_honours_client_payload(large_server: ServerProcess) -> None:
    for _ in range(2):
        out = dig_udp(large_server.port, 4096)
        assert "tc" not in flags_of(out), out
        assert out.count("record ") == 40
        assert udp_size_of(out) == 4096
    # The client's own size still binds below ours.
    assert "tc" in flags_of(dig_udp(large_server.port, 1232))
