"""`ztdns lab`: starts Knot DNS in a private namespace, prints the anchor and hints, exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.zone
import pytest

from ztdns.lab import netns
from ztdns.lab.run import missing_tools
from ztdns.lab.zones import SERVERS, build

_problem = netns.available() or missing_tools()


def test_zones_are_signed_with_the_announced_anchor() -> None:
    built = build({server: f"192.0.2.{i}" for i, server in enumerate(SERVERS, 1)})
    root = dns.zone.from_text(dict(built.zones["root"])["."], ".", relativize=False)
    dnskeys = root.find_rdataset(dns.name.root, "DNSKEY")
    ds = built.root_ds.split(" IN DS ")[1].strip()
    assert any(dns.dnssec.make_ds(dns.name.root, key, "SHA256").to_text() == ds for key in dnskeys)
    assert "a.root.lab." in built.root_hints


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(_problem is not None, reason=_problem or "")
def test_command_runs_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ztdns", "lab", "--dir", str(tmp_path), "--netns", "auto"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("cases:"):
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    output = "".join(lines)
    assert "trust anchor" in output and " IN DS " in output
    assert (tmp_path / "root.ds").read_text() in output
    assert (tmp_path / "root.hints").exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"ztlab-{process.pid}-" not in namespaces
