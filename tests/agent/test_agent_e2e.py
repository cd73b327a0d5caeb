"""End-to-end: the agent in a client namespace, real nftables, unbound as the DoT protective resolver."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from agent_lab import AgentProcess, Lab, Probe, agent_factory, lab, needs_root, probe

pytestmark = [needs_root(), pytest.mark.root, pytest.mark.slow]
__all__ = ["agent_factory", "lab", "probe"]


def start(
    lab: Lab,
    agents: list[AgentProcess],
    folder: Path,
    extra: str = "",
    dead_server: bool = False,
    metrics: str = "",
    **top: str,
) -> Path:
    config = lab.config(folder, extra, dead_server, metrics, **top)
    agents.append(AgentProcess(lab, config))
    return config


def test_blocked_until_answered_then_open_without_race(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path)
    assert not probe.connects("198.51.100.10")
    answer = probe.resolve("allowed.test")
    assert answer["rcode"] == "NOERROR" and answer["addresses"] == ["198.51.100.10"]
    # The very next packet after the answer: the set was written before the answer was released.
    assert probe.connects("198.51.100.10", timeout=0.2)
    assert probe.udp("198.51.100.10")
    # The host's resolver config now points at the stub.
    assert "nameserver 127.0.0.53" in (tmp_path / "resolv.conf").read_text()


def test_denied_name_hard_coded_ip_and_other_resolvers_stay_blocked(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path)
    assert probe.resolve("denied.test")["rcode"] == "NXDOMAIN"
    assert not probe.connects("198.51.100.20")
    # Plain DNS to another server (here the resolver's own port 53) and DoT to anyone else are dropped.
    assert not probe.resolve("allowed.test", server="192.0.2.10", timeout=0.5)["ok"]
    assert not probe.resolve("allowed.test", server="192.0.2.10", tcp=True, timeout=0.5)["ok"]
    assert not probe.connects("198.51.100.20", port=853)


def test_expiry_keeps_established_flows_and_repeated_answers_refresh(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path)
    assert probe.resolve("short.test")["addresses"] == ["198.51.100.11"]  # TTL 1 + grace 1
    assert probe.connects("198.51.100.11", hold="kept")
    probe.resolve("refresh.test")  # TTL 4 + grace 1 = 5 s
    time.sleep(2.5)
    before = lab.set_timeouts()["198.51.100.13"]
    assert before <= 3
    probe.resolve("refresh.test")
    assert lab.set_timeouts()["198.51.100.13"] >= 4  # delete+add in one transaction renewed it
    assert "198.51.100.11" not in lab.set_timeouts()
    assert not probe.connects("198.51.100.11")  # new connections: closed
    assert probe.ask(op="echo", id="kept")["ok"]  # the established one: still flowing


def test_failover_to_the_next_server_over_tcp_stub(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path, dead_server=True)
    for _ in range(2):  # the second query skips the held-down server
        assert probe.resolve("allowed.test", tcp=True)["addresses"] == ["198.51.100.10"]
    assert probe.connects("198.51.100.10")


def test_exception_networks(lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    extra = '[[exception]]\nname = "lab"\nnetworks = ["198.51.100.30/32"]\nports = [8080]\nprotocols = ["tcp"]\n'
    start(lab, agent_factory, tmp_path, extra)
    assert probe.connects("198.51.100.30")
    assert not probe.udp("198.51.100.30")  # udp is not in the exception
    assert not probe.connects("198.51.100.20")


def test_ipv6(lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    start(lab, agent_factory, tmp_path)
    assert not probe.connects("2001:db8:2::10")
    assert probe.resolve("v6.test", "AAAA")["addresses"] == ["2001:db8:2::10"]
    assert probe.connects("2001:db8:2::10")
    assert "2001:db8:2::10" in lab.set_timeouts("allow6")


def test_forward_chain_covers_a_nested_namespace(lab: Lab, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    extra = '[firewall]\nforward = true\n[stub]\nlisten = ["127.0.0.53:53", "192.0.2.129:53"]\n'
    extra += 'clients = ["192.0.2.128/25"]\n'
    start(lab, agent_factory, tmp_path, extra)
    container = Probe(lab.container)
    try:
        assert not container.connects("198.51.100.10")
        answer = container.resolve("allowed.test", server="192.0.2.129")
        assert answer["addresses"] == ["198.51.100.10"]
        assert container.connects("198.51.100.10")
        assert not container.connects("198.51.100.20")
    finally:
        container.close()


def test_killed_agent_stays_enforced_and_restart_restores(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    config = start(lab, agent_factory, tmp_path)
    probe.resolve("allowed.test")
    agent_factory[-1].kill(signal.SIGKILL)
    # Nothing new opens while the agent is down, what was open stays open.
    assert not probe.resolve("target.test", timeout=0.5)["ok"]
    assert not probe.connects("198.51.100.20")
    assert probe.connects("198.51.100.10")
    agent_factory.append(AgentProcess(lab, config))
    assert "198.51.100.10" in lab.set_timeouts()
    assert probe.connects("198.51.100.10")
    assert not probe.connects("198.51.100.12")


def test_resolver_down_nothing_opens(lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    config = start(lab, agent_factory, tmp_path, "[stub]\ntimeout = 1.0\n")
    lab.stop_unbound()
    try:
        assert probe.resolve("allowed.test")["rcode"] == "SERVFAIL"
        assert not probe.connects("198.51.100.10")
    finally:
        lab.start_unbound()
    deadline = time.monotonic() + 3
    status = json.loads(lab.ztdns(config, "status", check=False).stdout)
    while not status.get("errors") and time.monotonic() < deadline:
        time.sleep(0.2)  # the status file is rewritten every second
        status = json.loads(lab.ztdns(config, "status", check=False).stdout)
    assert status["running"] and "no protective server answered" in status["errors"][-1]["message"]


def test_deleted_or_altered_table_is_restored_with_its_grants(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    start(lab, agent_factory, tmp_path, metrics="127.0.0.1:9154")
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    tampering = [
        ("nft", "flush", "ruleset"),  # everything gone: egress open until the agent notices
        ("nft", "insert", "rule", "inet", "ztdns", "output", "accept"),  # everything accepted
        ("nft", "add", "chain", "inet", "ztdns", "output", "{ policy accept; }"),
        ("nft", "add", "table", "inet", "ztdns", "{ flags dormant; }"),  # the table switched off
    ]
    for command in tampering:
        lab.in_ns(lab.client, *command)
        deadline = time.monotonic() + 2
        while lab.nft_json("list", "table", "inet", "ztdns") is None or "accept" in _output_tail(lab):
            assert time.monotonic() < deadline, f"not restored after {' '.join(command)}"
            time.sleep(0.02)
        # Restored as it was: still default deny, and what was open is open again (grants re-written).
        time.sleep(0.1)
        assert not probe.connects("198.51.100.20"), " ".join(command)
        assert "198.51.100.10" in lab.set_timeouts() and probe.connects("198.51.100.10"), " ".join(command)
    scrape = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9154/').read().decode())"
    assert "ztdns_agent_table_restored_total 4.0" in lab.in_ns(lab.client, "python3", "-c", scrape).stdout
    log = (tmp_path / "agent.log").read_text()
    assert log.count("table inet ztdns was deleted by someone else") == 1
    assert log.count("table inet ztdns was altered by someone else") == 3
    # New answers open addresses in the restored table.
    assert probe.resolve("target.test")["addresses"] == ["198.51.100.12"] and probe.connects("198.51.100.12")


def _output_tail(lab: Lab) -> str:
    """The output chain's policy line and first rule, or "accept" while either still accepts everything."""
    listing = lab.in_ns(lab.client, "nft", "list", "table", "inet", "ztdns", check=False).stdout
    chain = listing.split("chain output {", 1)[-1].splitlines()
    if "flags dormant" in listing or (len(chain) > 1 and "policy accept" in chain[1]):
        return "accept"
    return "accept" if len(chain) > 2 and chain[2].strip() == "accept" else ""


def test_audit_mode_logs_without_blocking_and_learn_proposes(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    config = start(lab, agent_factory, tmp_path, mode="audit")
    assert probe.connects("198.51.100.20", hold="unexplained")  # would be dropped: logged, not blocked
    probe.resolve("short.test")
    time.sleep(2.2)  # the grant expires; the name is remembered for the record
    assert probe.connects("198.51.100.11")
    assert probe.resolve("allowed.test")["addresses"]
    assert probe.connects("198.51.100.10")  # open: no record
    audit = tmp_path / "state" / "audit.jsonl"
    deadline = time.monotonic() + 3
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(records) < 2:
        records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        time.sleep(0.05)
    by_destination = {r["destination"]: r for r in records}
    assert set(by_destination) == {"198.51.100.20", "198.51.100.11"}
    unexplained = by_destination["198.51.100.20"]
    assert unexplained["port"] == 8080 and unexplained["protocol"] == "tcp" and unexplained["name"] is None
    assert unexplained["process"] and "python" in str(unexplained["process"])
    assert by_destination["198.51.100.11"]["name"] == "short.test"
    proposal = lab.ztdns(config, "learn", "--since", "1h").stdout
    assert "#   short.test  (1 records" in proposal  # allowed already: outlived, not proposed
    assert 'networks = ["198.51.100.20/32"]' in proposal and "ports = [8080]" in proposal
    assert "198.51.100.10" not in proposal


def test_flows_status_and_uninstall(lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path) -> None:
    config = start(lab, agent_factory, tmp_path, metrics="127.0.0.1:9154")
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    assert probe.connects("198.51.100.10", hold="flow")
    scrape = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9154/').read().decode())"
    exposed = lab.in_ns(lab.client, "python3", "-c", scrape).stdout
    assert 'ztdns_agent_answers_total{result="opened"} 1.0' in exposed
    assert "ztdns_agent_addresses_added_total 1.0" in exposed and "ztdns_agent_plumbing_seconds_bucket" in exposed
    flows = [json.loads(line) for line in lab.ztdns(config, "flows", "--json").stdout.splitlines()]
    labelled = [f for f in flows if f["destination"] == "198.51.100.10" and f["port"] == 8080]
    assert labelled and labelled[0]["name"] == "allowed.test" and labelled[0]["identity"] == "spiffe://test/host"
    status = json.loads(lab.ztdns(config, "status").stdout)
    assert status["running"] and status["mode"] == "enforce" and status["sets"]["allow4"] >= 1
    agent_factory[-1].kill(signal.SIGTERM)
    lab.ztdns(config, "uninstall")
    assert lab.nft_json("list", "table", "inet", "ztdns") is None
    assert (tmp_path / "resolv.conf").read_text() == "nameserver 192.0.2.99\n"


def test_element_batches_set_exact_timeouts_in_the_kernel(lab: Lab, agent_factory: list[AgentProcess]) -> None:
    # Longer first, then shorter: only delete+add in one transaction yields exactly the new timeout; a plain
    # add keeps the old expiry on kernels without element timeout updates. Removing a missing element must not
    # fail the transaction either. The same with in-place updates, where the probe says the kernel has them.
    script = """
import json
from ztdns.config.agent import AgentConfig
import sys
from ztdns.agent.nfnetlink import ElementWriter, TableWatch, updates_timeouts_in_place
from ztdns.agent.nft import Nft
from ztdns.agent.ruleset import build_ruleset
from ztdns.agent.setwriter import packed_sets
from ztdns.config import parse_model
nft = Nft()
nft.run(build_ruleset(parse_model(AgentConfig, '[[server]]\\naddress = "192.0.2.10"\\nhostname = "d"\\n')))
writer = ElementWriter("ztdns")
writer.in_place = sys.argv[1] == "in-place"
watch = TableWatch("ztdns")
before = watch.generation()
writer.write(packed_sets({"192.0.2.77": 100, "2001:db8::77": 100, "192.0.2.78": 100}, ()))
writer.write(packed_sets({"192.0.2.77": 10, "2001:db8::77": 20}, {"192.0.2.78", "192.0.2.79"}))
after = watch.generation()
# What the table watch relies on: each of our transactions moves the generation on by exactly one.
assert after - before == writer.commits == 2, (before, after, writer.commits)
print(json.dumps([updates_timeouts_in_place(nft), nft.query("list table inet ztdns")]))
"""
    for mode in ("three-step", "in-place"):
        in_place, items = json.loads(lab.in_ns(lab.client, sys.executable, "-c", script, mode).stdout)
        if mode == "in-place" and not in_place:
            continue  # a kernel before 6.10: the agent never uses in-place updates there
        elements = {
            elem["elem"]["val"]: elem["elem"]["expires"]
            for item in items
            if "set" in item
            for elem in item["set"].get("elem", [])
        }
        assert elements.keys() == {"192.0.2.77", "2001:db8::77"}, mode
        assert 8 <= elements["192.0.2.77"] <= 10 and 18 <= elements["2001:db8::77"] <= 20, mode
