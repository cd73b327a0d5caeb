"""Per-workload identity (issue 14 item 9): two cgroups on one host, one mapped to a workload with its own SPIFFE
ID and policy, the other the host's. Each asks ztdns with its own certificate, and what one's answers open the
other cannot reach. Real closed loop: ``ztdns serve`` with mTLS and per-identity policies, nftables, cgroup v2."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lab import GUEST_ID, PYTHON, Lab, Probe, needs_root
from ztdns.agent.asker import cgroup2_root

pytestmark = [needs_root(), pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = Lab(tmp_path_factory.mktemp("workloads"), protective="ztdns")
    try:
        built.build()
        yield built
    finally:
        built.teardown()


def test_two_workloads_ask_with_their_own_identity_and_reach_only_their_own_answers(lab: Lab, tmp_path: Path) -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("needs a cgroup v2 hierarchy")
    guest, other = (root / f"ztdns-test-{tmp_path.name}-{side}" for side in ("guest", "other"))
    for group in (guest, other):
        group.mkdir()
    # The workload's SVID as files a SPIFFE helper would rotate.
    shutil.copy(lab.pki / "guest.crt", tmp_path / "svid.pem")
    shutil.copy(lab.pki / "guest.key", tmp_path / "svid.key")
    workload = f"""[[workload]]
name = "guest"
cgroup = "{guest.name}"
identity = "{GUEST_ID}"
client_cert = "{tmp_path / "svid.pem"}"
client_key = "{tmp_path / "svid.key"}"
"""
    config = lab.closed_loop_config(tmp_path, extra=workload)
    # `ip netns exec` gives the agent a fresh /sys: mount the cgroup v2 hierarchy where nftables looks for it.
    mount = 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"'
    log = (tmp_path / "agent.log").open("w")
    command = ["ip", "netns", "exec", lab.client, "sh", "-c", mount, "agent", PYTHON, "-m", "ztdns", "agent"]
    agent = subprocess.Popen(
        [*command, "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    mapped, unmapped = Probe(lab.client, guest), Probe(lab.client, other)
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "state" / "status.json").exists():
            assert agent.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.05)
        # The workload asks with its own certificate: ztdns applies the guest policy (target.test only).
        assert mapped.resolve("target.test")["addresses"] == ["198.51.100.12"]
        denied = mapped.resolve("allowed.test")
        assert denied["rcode"] == "NXDOMAIN" and denied["ede"] == [[15, "policy=guest rule=default-deny"]]
        # Any other process is the host.
        assert unmapped.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
        # What each one's answers opened is reachable by it alone.
        assert mapped.connects("198.51.100.12") and not unmapped.connects("198.51.100.12")
        assert unmapped.connects("198.51.100.10") and not mapped.connects("198.51.100.10")
        assert "198.51.100.12" in lab.set_timeouts("allow4_guest")
        assert "198.51.100.12" not in lab.set_timeouts("allow4")
        # The SVID rotated on disk (here: to the host's): new connections carry it within a second or two.
        shutil.copy(lab.pki / "host.crt", tmp_path / "svid.pem")
        shutil.copy(lab.pki / "host.key", tmp_path / "svid.key")
        deadline = time.monotonic() + 5
        while mapped.resolve("allowed.test").get("rcode") != "NOERROR":
            assert time.monotonic() < deadline, "the rotated certificate was not used"
            time.sleep(0.3)
        assert mapped.connects("198.51.100.10")  # now granted to the workload's own set
    finally:
        mapped.close()
        unmapped.close()
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        log.close()
        lab.in_ns(lab.client, "nft", "delete", "table", "inet", "ztdns", check=False)
        lab.in_ns(lab.client, "nft", "delete", "table", "netdev", "ztdns", check=False)
        for group in (guest, other):
            group.rmdir()
