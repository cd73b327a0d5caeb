"""The agent against ways around it (issue 14), in the namespace lab of agent_lab.py: silent egress channels,
caps that close live addresses, a second start, flows, uninstall while running, who the stub answers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent_lab import (
    MANY,
    PYTHON,
    RESOLVER,
    AgentProcess,
    Lab,
    Probe,
    agent_factory,
    lab,
    needs_root,
    probe,
)
from ztdns.agent.asker import cgroup2_root

pytestmark = [needs_root(), pytest.mark.root, pytest.mark.slow]
__all__ = ["agent_factory", "lab", "probe"]

HERE = Path(__file__).parents[1]  # tests/: the helper scripts
FOREIGN4, FOREIGN6 = "198.51.100.20", "2001:db8:2::10"


def start(lab: Lab, agents: list[AgentProcess], folder: Path, extra: str = "", **top: str) -> Path:
    config = lab.config(folder, extra, False, "", **top)
    agents.append(AgentProcess(lab, config))
    return config


def _bypass(lab: Lab, *args: str) -> object:
    result = lab.in_ns(lab.client, PYTHON, str(HERE / "agent_bypass.py"), "send", *args)
    return json.loads(result.stdout)


class Sniffer:
    """What reaches the server's side of the link, while the block runs."""

    def __init__(self, lab: Lab, seconds: float = 3.0) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", lab.server, PYTHON, str(HERE / "agent_bypass.py"), "sniff", str(seconds), "eth0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        self.seen: list[str] = []

    def __enter__(self) -> Sniffer:
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.process.communicate(timeout=10)
        self.seen = json.loads(out)


def _server_mac(lab: Lab) -> str:
    return lab.in_ns(lab.server, "cat", "/sys/class/net/eth0/address").stdout.strip()


def test_no_silent_egress_channels(lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    start(lab, agent_factory, tmp_path)
    mac = _server_mac(lab)
    with Sniffer(lab) as sniffer:
        _bypass(lab, "udp-from", "68", FOREIGN4, "67")  # DHCPv4 client port to a foreign address
        _bypass(lab, "udp-from", "546", FOREIGN6, "547")  # DHCPv6
        for kind in ("3", "11", "12", "8"):  # ICMP errors and echo, carrying data
            _bypass(lab, "icmp", FOREIGN4, kind)
        for kind in ("1", "2", "3", "4", "135", "136", "133", "143", "128"):  # ICMPv6 errors, ND, MLD, echo
            _bypass(lab, "icmp", FOREIGN6, kind)
        # A whole DNS round trip in raw frames to a resolver the host may not use (its plain port 53).
        plain = _bypass(lab, "packet-dns", "eth0", mac, "192.0.2.1", RESOLVER, "allowed.test", "qdisc")
        direct = _bypass(lab, "packet-dns", "eth0", mac, "192.0.2.1", RESOLVER, "allowed.test", "bypass")
    assert sniffer.seen == []
    assert plain is not True and direct is not True  # False, or the drop reported to the sender
    # What the stack sends still leaves (marked at postrouting, unmarked at egress): DNS, an opened address.
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    assert probe.connects("198.51.100.10") and probe.connects("2001:db8:2::10") is False
    assert probe.resolve("v6.test", "AAAA")["addresses"] == [FOREIGN6] and probe.connects(FOREIGN6)


def test_cap_never_closes_the_answer_being_released(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path)  # the default cap: 256 addresses per name
    answer = probe.resolve("many.test", tcp=True)
    assert sorted(answer["addresses"]) == sorted(MANY)
    assert set(MANY) <= set(lab.set_timeouts())
    # The application connects to the first and the last address of the answer it got.
    assert probe.connects(MANY[0]) and probe.connects(MANY[-1])


def test_second_start_fails_cleanly_and_the_first_keeps_working(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    config = start(lab, agent_factory, tmp_path)
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    state = tmp_path / "state"
    journal_before = (state / "journal.jsonl").read_bytes()
    assert b"198.51.100.10" in journal_before
    ruleset_before = lab.in_ns(lab.client, "nft", "-s", "-t", "list", "ruleset").stdout  # no counters, no elements
    second = lab.ztdns(config, check=False)
    assert second.returncode == 1 and "an agent is running" in second.stderr and "nothing was changed" in second.stderr
    assert "Traceback" not in second.stderr
    # Nothing touched: the same journal (the same file, not a compacted one), the same table, still answering.
    assert (state / "journal.jsonl").read_bytes() == journal_before
    assert not (state / "journal.old.jsonl").exists()
    assert lab.in_ns(lab.client, "nft", "-s", "-t", "list", "ruleset").stdout == ruleset_before
    assert probe.resolve("target.test")["addresses"] == ["198.51.100.12"] and probe.connects("198.51.100.12")
    assert b"198.51.100.12" in (state / "journal.jsonl").read_bytes()
    assert agent_factory[-1].process.poll() is None


def test_uninstall_while_running_refuses_or_stops_and_leaves_the_host_as_before(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    config = start(lab, agent_factory, tmp_path)
    original = "nameserver 192.0.2.99\n"
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    refused = lab.ztdns(config, "uninstall", check=False)
    assert refused.returncode == 1 and "--stop" in refused.stderr
    assert lab.nft_json("list", "table", "inet", "ztdns") is not None and probe.resolve("target.test")["ok"]
    lab.ztdns(config, "uninstall", "--stop")
    assert agent_factory[-1].process.wait(5) == 0
    time.sleep(0.3)  # longer than the agent's table watch: nobody rebuilds it
    assert lab.nft_json("list", "table", "inet", "ztdns") is None
    assert lab.nft_json("list", "table", "netdev", "ztdns") is None
    assert (tmp_path / "resolv.conf").read_text() == original
    assert not (tmp_path / "state").exists()  # no grants to reopen, no lock, no status
    # The next install starts from nothing.
    start(lab, agent_factory, tmp_path)
    restored = [line for line in (tmp_path / "agent.log").read_text().splitlines() if "addresses restored" in line]
    assert restored[-1].endswith(", 0 addresses restored")
    assert "198.51.100.10" not in lab.set_timeouts()
    agent_factory[-1].kill(signal.SIGTERM)


def test_stub_on_a_network_address_answers_only_its_client_networks(
    lab: Lab, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    listen = '[stub]\nlisten = ["127.0.0.53:53", "192.0.2.1:53"]\n'
    refused = lab.ztdns(lab.config(tmp_path, listen), check=False)
    assert refused.returncode == 1 and "set clients to the networks that may ask" in refused.stderr
    # The stub listens on the server-side network but serves only the container network behind the host.
    start(lab, agent_factory, tmp_path, listen + 'clients = ["192.0.2.128/25"]\n[firewall]\nforward = true\n')
    outsider, container = Probe(lab.server), Probe(lab.container)
    try:
        assert not outsider.resolve("allowed.test", server="192.0.2.1", timeout=0.5)["ok"]
        assert not outsider.resolve("allowed.test", server="192.0.2.1", tcp=True, timeout=0.5)["ok"]
        assert "198.51.100.10" not in lab.set_timeouts()  # nothing opened on the outsider's behalf
        assert container.resolve("allowed.test", server="192.0.2.1")["addresses"] == ["198.51.100.10"]
    finally:
        outsider.close()
        container.close()


def test_flows_show_ipv6_and_the_name_each_workload_resolved(
    lab: Lab, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("needs a cgroup v2 hierarchy")
    groups = [root / f"ztdns-test-{tmp_path.name}-{side}" for side in "ab"]
    for group in groups:
        group.mkdir()
    config = start(lab, agent_factory, tmp_path)
    a, b = (Probe(lab.client, group) for group in groups)
    try:
        # Two workloads, one address: a asked for allowed.test, b for shared.test (granted longer).
        assert a.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
        assert b.resolve("shared.test")["addresses"] == ["198.51.100.10"]
        assert a.connects("198.51.100.10", hold="a") and b.connects("198.51.100.10", hold="b")
        assert a.resolve("v6.test", "AAAA")["addresses"] == [FOREIGN6] and a.connects(FOREIGN6, hold="v6")
        time.sleep(1.3)  # the agent writes what it saw asked once a second
        flows = [json.loads(line) for line in lab.ztdns(config, "flows", "--json").stdout.splitlines()]
        shared = {
            (f["name"], f["workload"])
            for f in flows
            if f["destination"] == "198.51.100.10" and f["state"] == "ESTABLISHED"
        }
        # The cgroup's path where the flows command sees the hierarchy, else its ID (`ip netns exec` remounts /sys).
        workloads = [{f"/{group.name}", f"cgroup {group.stat().st_ino}"} for group in groups]
        assert {name for name, _ in shared} == {"allowed.test", "shared.test"} and len(shared) == 2
        assert all(workload in workloads[name != "allowed.test"] for name, workload in shared)
        v6 = [f for f in flows if f["destination"] == FOREIGN6 and f["state"] == "ESTABLISHED"]
        assert v6 and v6[0]["name"] == "v6.test" and v6[0]["port"] == 8080
    finally:
        a.close()
        b.close()
        for group in groups:
            group.rmdir()
