"""The closed loop end to end: the agent in a client namespace, real nftables, and ``ztdns serve`` as the
protective resolver — DoT and DoH listeners requiring a client certificate, the host's SPIFFE ID mapped to its
policy, forwarding to an Unbound with the test zone. Every case runs once over DoT and once over DoH.

One lab (namespaces, ztdns, Unbound, echo services) for the module; one agent per transport.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_lab import RESOLVER, AgentProcess, Lab, Probe, needs_root

pytestmark = [needs_root("kdig"), pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    built = Lab(tmp_path_factory.mktemp("closed-loop"), protective="ztdns")
    try:
        built.build()
        yield built
    finally:
        built.teardown()


@pytest.fixture(scope="module", params=["dot", "doh"])
def agent(request: pytest.FixtureRequest, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The agent of this host, speaking ``transport`` to ztdns with the host's client certificate."""
    transport: str = request.param
    folder = tmp_path_factory.mktemp(f"agent-{transport}")
    config = lab.closed_loop_config(folder, transport, "[allow]\nttl_floor = 0\nttl_ceiling = 5\ngrace = 1\n")
    process = AgentProcess(lab, config)
    try:
        yield transport
    finally:
        process.kill(signal.SIGTERM)
        lab.in_ns(lab.client, "nft", "delete", "table", "inet", "ztdns", check=False)


@pytest.fixture
def probe(lab: Lab, agent: str) -> Iterator[Probe]:
    client = Probe(lab.client)
    yield client
    client.close()


def test_allowed_name_opens_exactly_its_addresses_and_the_first_connection_succeeds(lab: Lab, probe: Probe) -> None:
    assert not probe.connects("198.51.100.10")
    answer = probe.resolve("allowed.test")
    assert answer["rcode"] == "NOERROR" and answer["addresses"] == ["198.51.100.10"]
    # The very next packet: the set was written before ztdns's answer was released to the application.
    assert probe.connects("198.51.100.10", timeout=0.2)
    assert set(lab.set_timeouts()) == {"198.51.100.10"}
    assert not probe.connects("198.51.100.11")  # its neighbour stays closed


def test_denied_name_gets_nxdomain_with_ede_15_and_stays_closed(lab: Lab, probe: Probe) -> None:
    answer = probe.resolve("denied.test")
    assert answer["rcode"] == "NXDOMAIN" and not answer["addresses"]
    assert answer["ede"] == [[15, "policy=host rule=deny:denied.test"]]
    assert not probe.connects("198.51.100.20")
    assert "198.51.100.20" not in lab.set_timeouts()


def test_cname_into_a_denied_name_stays_closed(lab: Lab, probe: Probe) -> None:
    # sneaky.test is allowed, but its target denied.test is not: ztdns checks every name of the chain.
    answer = probe.resolve("sneaky.test")
    assert answer["rcode"] == "NXDOMAIN" and answer["ede"][0][0] == 15 and not answer["addresses"]
    assert not probe.connects("198.51.100.20")


def test_allowed_cname_chain_opens_only_the_final_addresses(lab: Lab, probe: Probe) -> None:
    answer = probe.resolve("alias.test")
    assert answer["rcode"] == "NOERROR" and answer["addresses"] == ["198.51.100.12"]
    assert probe.connects("198.51.100.12", timeout=0.2)
    assert "198.51.100.12" in lab.set_timeouts() and "198.51.100.20" not in lab.set_timeouts()


def test_cache_hits_on_ztdns_still_refresh_the_agents_timeouts(lab: Lab, probe: Probe) -> None:
    first = probe.resolve("cached.test")  # TTL 30 upstream; the agent grants clamp(30, 0, 5) + 1 = 6 s
    assert first["addresses"] == ["198.51.100.14"]
    time.sleep(3.2)
    assert lab.set_timeouts()["198.51.100.14"] <= 3
    started = time.monotonic()
    second = probe.resolve("cached.test")
    # Unbound serves local data with its full TTL every time: a smaller one is ztdns answering from its cache.
    assert second["addresses"] == ["198.51.100.14"] and second["ttls"][0] <= first["ttls"][0] - 3
    left = lab.set_timeouts()["198.51.100.14"]
    # Renewed by the cached answer: at least 6 s less the time this step took, less nft's rounding down; the first
    # grant alone would show at most 2.8 s less that time. The margin between holds however slow the machine is.
    assert left >= 4.5 - (time.monotonic() - started)
    assert probe.connects("198.51.100.14")


def test_another_identity_on_the_host_gets_its_own_policy_and_opens_nothing(lab: Lab, probe: Probe, agent: str) -> None:
    # The firewall lets the host reach its configured server's port only; ztdns tells identities apart by
    # certificate.
    def dot(name: str, identity: str) -> dict[str, object]:
        pki = lab.pki
        files = {"cert": str(pki / f"{identity}.crt"), "key": str(pki / f"{identity}.key")} if identity else {}
        return probe.resolve(name, server=RESOLVER, port=853, ca=str(pki / "ca.crt"), timeout=1.0, **files)

    if agent == "doh":
        # This agent talks DoH to port 443: DoT to the same resolver is as closed as any other destination.
        assert not dot("target.test", "guest")["ok"]
        return
    guest = dot("allowed.test", "guest")
    assert guest.get("rcode") == "NXDOMAIN" and guest["ede"] == [[15, "policy=guest rule=default-deny"]], guest
    assert dot("target.test", "guest")["addresses"] == ["198.51.100.12"]
    host = dot("short.test", "host")
    assert host.get("addresses") == ["198.51.100.11"], host
    # Resolved around the stub: nothing was opened for that answer.
    assert not probe.connects("198.51.100.11")
    # No certificate: ztdns refuses the handshake (client_auth = "require").
    refused = dot("allowed.test", "")
    assert not refused["ok"] and "rcode" not in refused


def test_a_refused_name_asked_by_a_short_lived_dig_is_proposed_by_learn(lab: Lab, probe: Probe, agent: str) -> None:
    state = next(Path(f).parent for f in lab.folder.parent.glob(f"agent-{agent}*/agent.toml")) / "state"
    dig = lab.in_ns(lab.client, "dig", "@127.0.0.53", "denied.test", "+tries=1", "+time=2", check=False)
    assert "NXDOMAIN" in dig.stdout
    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in records if r.get("blocked_name") == "denied.test"]
    assert refused and refused[-1]["ede"] == 15 and refused[-1]["process"]["comm"] == "dig", refused
    config = state.parent / "agent.toml"
    proposal = lab.ztdns(config, "learn", "--since", "1h").stdout
    assert '    "denied.test",  # ' in proposal and "dig" in proposal
