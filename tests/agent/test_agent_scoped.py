"""Port- and protocol-scoped grants (issue 14 item 10) in the real closed loop: ``ztdns serve`` with an allow rule
``{ pattern = "scoped.test", ports = ["tcp/8080"] }``, the agent asking for the grant scope with its EDNS option,
and nftables' concatenated sets. The scoped name's address also serves "DoH" on tcp/8443 (an echo stands in):
the answer must not open that port, nor UDP."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lab import HERE, PYTHON, Lab, Probe, needs_root
from ztdns.wire.grant_scope import GRANT_SCOPE

pytestmark = [needs_root(), pytest.mark.root, pytest.mark.slow]
SCOPED = "198.51.100.15"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = Lab(tmp_path_factory.mktemp("scoped"), protective="ztdns")
    try:
        built.build()
        yield built
    finally:
        built.teardown()


def _wait_started(agent: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 15
    while not (folder / "state" / "status.json").exists():
        assert agent.poll() is None and time.monotonic() < deadline, (folder / "agent.log").read_text()
        time.sleep(0.05)


def test_a_scoped_name_opens_its_port_only_and_the_app_never_sees_the_option(lab: Lab, tmp_path: Path) -> None:
    # A second service on the scoped address: tcp/8443 (a DoH server sharing the IP) and udp/8080.
    shared = subprocess.Popen(
        ["ip", "netns", "exec", lab.server, PYTHON, str(HERE / "agent_echo.py"), "8443", "8080"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shared.stdout is not None and shared.stdout.readline().strip() == "ready"
    config = lab.closed_loop_config(tmp_path)
    log = (tmp_path / "agent.log").open("w")
    command = ["ip", "netns", "exec", lab.client, PYTHON, "-m", "ztdns", "agent", "--config", str(config)]
    agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    probe = Probe(lab.client)
    try:
        _wait_started(agent, tmp_path)
        for port in (8080, 8443):
            assert not probe.connects(SCOPED, port)
        answer = probe.resolve("scoped.test")
        assert answer["addresses"] == [SCOPED]
        assert GRANT_SCOPE not in answer["options"]  # the agent took it out
        assert probe.connects(SCOPED, 8080)
        assert not probe.connects(SCOPED, 8443)  # the shared address's DoH port: not granted
        assert not probe.udp(SCOPED, 8080)  # the granted port, another protocol
        assert not probe.udp(SCOPED, 8081)
        elements = lab.in_ns(lab.client, "nft", "list", "set", "inet", "ztdns", "scoped4").stdout
        assert f"{SCOPED} . tcp . 8080" in elements
        assert SCOPED not in lab.in_ns(lab.client, "nft", "list", "set", "inet", "ztdns", "allow4").stdout
        # An application asking without EDNS gets no OPT record back (the agent added one to ask for the scope).
        plain = probe.resolve("scoped.test", edns=-1, tcp=True)
        assert plain["addresses"] == [SCOPED] and not plain["opt"]
        # Unscoped names keep opening every port of their address.
        assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
        assert probe.connects("198.51.100.10") and probe.udp("198.51.100.10")
        # The scope survives a restart (journal, then the kernel's sets as they were).
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        (tmp_path / "state" / "status.json").unlink(missing_ok=True)
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_started(agent, tmp_path)
        assert probe.connects(SCOPED, 8080) and not probe.connects(SCOPED, 8443)
    finally:
        probe.close()
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        log.close()
        shared.terminate()
        shared.wait(10)
        lab.in_ns(lab.client, "nft", "delete", "table", "inet", "ztdns", check=False)
        lab.in_ns(lab.client, "nft", "delete", "table", "netdev", "ztdns", check=False)
