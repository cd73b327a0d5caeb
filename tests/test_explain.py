"""`ztdns explain`: sends nothing upstream unless asked; with --resolve it shows the real answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.unbound import UnboundFactory

pytestmark = pytest.mark.slow


def explain(config: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "ztdns", "explain", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_explain_asks_upstream_only_with_resolve(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    upstream = unbound_upstream(
        [
            "example.test. 3600 IN SOA ns.example.test. h.example.test. 1 3600 600 86400 60",
            "www.example.test. 300 IN A 192.0.2.7",
        ],
        zones=("example.test.",),
    )
    config = tmp_path / "ztdns.toml"
    config.write_text(f"""
[resolver]
upstreams = [{{ address = "{upstream}" }}]

[dnssec]
validation = false

[identities.lo]
networks = ["127.0.0.0/8"]
policies = ["p"]

[policies.p]
allow = ["**.example.test"]
""")
    # Without --resolve the forwarder is not even built: the stand-in says where the question would have gone.
    quiet = explain(config, "--client", "127.0.0.1", "www.example.test")
    assert f"not resolved: would be forwarded to {upstream}" in quiet
    assert "decision:  allow" in quiet
    resolved = explain(config, "--client", "127.0.0.1", "www.example.test", "--resolve")
    assert "response:  NOERROR" in resolved and "192.0.2.7" in resolved
