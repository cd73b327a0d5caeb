"""Bundles without NATS: packing the files a config names, signatures, tampering, paths that escape; the node's
config checks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ztdns.control.bundle import Bundle, BundleError, pack, verify


def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir(parents=True)
    (tmp_path / "lists" / "deny.txt").write_text("ads.example\n")
    outside = tmp_path.parent / f"{tmp_path.name}-ca.pem"
    outside.write_text("not really a CA\n")
    (tmp_path / "ztdns.toml").write_text(
        "[policies.p]\n"
        'deny_lists = ["lists/deny.txt"]\n'
        f'allow = ["{outside.name}"]\n'  # a string that is not a file here: not packed
        "[dnssec]\n"
        f'trust_anchors = ["{outside}"]\n'
    )
    return tmp_path / "ztdns.toml"


def test_pack_takes_every_named_file_and_rewrites_paths_outside_the_directory(tmp_path: Path) -> None:
    path = config_dir(tmp_path / "conf")
    bundle = pack(path, "resolver", 3, "me@host")
    names = sorted(bundle.files)
    assert names[1] == "lists/deny.txt" and names[0].startswith("_files/") and names[0].endswith("-ca.pem")
    assert f'trust_anchors = ["{names[0]}"]' in bundle.config
    assert bundle.config.count("\n") == path.read_text().count("\n")  # same lines: errors name the same line
    written = bundle.write(tmp_path / "out")
    assert (tmp_path / "out" / names[0]).read_text() == "not really a CA\n"
    assert written.name == "ztdns.toml" and written.read_text() == bundle.config


def test_signatures_and_tampering(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    bundle = pack(config_dir(tmp_path / "conf"), "resolver", 3)
    data = bundle.sign(key)
    assert verify(data, key.public_key()).digest() == bundle.digest()
    with pytest.raises(BundleError, match="bad signature"):
        verify(data, Ed25519PrivateKey.generate().public_key())
    envelope = json.loads(data)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["revision"] = 4
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(BundleError, match="bad signature"):
        verify(json.dumps(envelope).encode(), key.public_key())
    with pytest.raises(BundleError, match="malformed"):
        verify(b"{}", key.public_key())


def test_a_signed_bundle_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    evil = Bundle("resolver", 1, "ztdns.toml", "", {"../../etc/x": b"x"})
    with pytest.raises(BundleError, match="escapes"):
        verify(evil.sign(key), key.public_key())


@pytest.mark.slow
def test_check_names_an_unusable_public_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[control]\nservers = ["nats://127.0.0.1:4222"]\npublic_key = "missing.pub"\nnode = "r1"\n')
    out = subprocess.run(
        [sys.executable, "-m", "ztdns", "check", "--config", str(path)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"{path}:3: control.public_key: cannot use the public key:")


AGENT_HOST = """identity = "spiffe://test/host"
state_dir = "state"
[[server]]
address = "192.0.2.1:853"
hostname = "old.test"
[tls]
ca_file = "ca.pem"
[control]
servers = ["nats://192.0.2.5:4222", "tls://[2001:db8::5]", "nats://nats.example:4333"]
public_key = "fleet.pub"
node = "host1"
"""

AGENT_FLEET = """mode = "audit"
identity = "spiffe://fleet/ignored"
[[server]]
address = "192.0.2.2:853"
hostname = "new.test"
[[exception]]
name = "fleet"
networks = ["10.0.0.0/8"]
"""


def test_an_agent_bundle_replaces_the_fleets_sections_and_keeps_the_hosts(tmp_path: Path) -> None:
    from ztdns.agent.control import node_config, published_config
    from ztdns.config import parse_model
    from ztdns.config.agent import AgentConfig

    local = parse_model(AgentConfig, AGENT_HOST, "agent.toml", tmp_path)
    source = tmp_path / "fleet" / "agents.toml"
    source.parent.mkdir()
    source.write_text(AGENT_FLEET)
    bundle = pack(source, "agent", 3)
    merged = node_config(local, published_config(bundle, bundle.write(tmp_path / "rev-3")))
    assert [s.hostname for s in merged.server] == ["new.test"] and merged.exception[0].name == "fleet"
    assert (merged.identity, merged.mode, merged.control) == (local.identity, "enforce", local.control)
    assert merged.path(merged.tls.ca_file) == tmp_path / "ca.pem"
    assert merged.state_path == tmp_path / "state"


def test_the_agent_table_keeps_its_control_plane_reachable(tmp_path: Path) -> None:
    """A bundle without an exception for NATS must not cut the agent off from the next bundle."""
    from ztdns.agent.ruleset import build_ruleset
    from ztdns.config import parse_model
    from ztdns.config.agent import AgentConfig

    rules = build_ruleset(parse_model(AgentConfig, AGENT_HOST, "agent.toml", tmp_path))
    assert 'ip daddr 192.0.2.5 tcp dport 4222 accept comment "control plane"' in rules
    assert 'ip6 daddr 2001:db8::5 tcp dport 4222 accept comment "control plane"' in rules
    assert "4333" not in rules  # a host name is resolved through the stub like any other


def test_an_agent_bundle_whose_table_does_not_load_leaves_the_previous_one_in_force(tmp_path: Path) -> None:
    from ztdns.agent.control import apply, node_config
    from ztdns.agent.nft import NftError
    from ztdns.config import parse_model
    from ztdns.config.agent import AgentConfig

    local = parse_model(AgentConfig, AGENT_HOST, "agent.toml", tmp_path)
    published = parse_model(AgentConfig, AGENT_FLEET, "agents.toml", tmp_path)

    class Agent:  # what apply uses of the running agent
        config = local
        scopes: list[object] = []
        installed: list[AgentConfig] = []

        def _install(self) -> None:
            self.installed.append(self.config)
            if self.config.exception:
                raise NftError("the kernel said no")

    agent = Agent()
    with pytest.raises(NftError):
        apply(agent, node_config(local, published))  # type: ignore[arg-type]
    assert agent.config is local and agent.installed[-1] is local  # rebuilt from the previous config
