"""``ztdns keys``: every key's timeline (created, publish, ready, active, retire, ds_seen, remove) and the next
event; ``keys ds`` lists only keys the parent may point at (ready); errors name times, not epochs."""

from __future__ import annotations

import re
from pathlib import Path

import dns.rdatatype
import pytest

from authority_lab import ORIGIN, signed_zone
from ztdns.authority.kasp import Policy
from ztdns.cli import main

CONFIG = """
[server]
state_dir = "{state}"
[[authority.zones]]
name = "corp.internal"
records = ["@ SOA ns1 hostmaster 1 3600 600 86400 60", "@ NS ns1", "ns1 A 127.0.0.1"]
"""


def test_keys_list_ds_and_ds_seen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ztdns.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    args = ["corp.internal", "--config", str(config)]
    assert main(["keys", "list", *args]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "ds_seen" in out and "created" in out
    assert "next event" in out
    assert main(["keys", "ds", *args]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["keys", "rollover", "--role", "ksk", *args]) == 0
    capsys.readouterr()
    # The new KSK is published but not ready: its DS is not offered to the parent yet.
    assert main(["keys", "ds", *args]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["keys", "list", *args]) == 0
    assert re.search(r"next event: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ key \d+ ready", capsys.readouterr().out)
    assert main(["keys", "ds-seen", *args]) == 1
    err = capsys.readouterr().err
    assert "not ready before" in err and re.search(r"\d{4}-\d\d-\d\dT", err) and not re.search(r"\d{10}\.\d", err)


def test_ds_and_cds_with_sha384(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ztdns.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    assert main(["keys", "ds", "corp.internal", "--digest", "sha384", "--config", str(config)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[5] == "4" and len(line.split()[6]) == 96  # digest type 4: SHA-384
    policy = Policy(dnskey_ttl=0, propagation_delay=0)
    zone = signed_zone(tmp_path / "z", policy=policy, cds_digest="SHA384")
    assert zone.keys is not None
    zone.keys.rollover("ksk", 300)
    assert zone.refresh_keys()
    cds = zone.zone.get(ORIGIN, dns.rdatatype.CDS)
    assert cds is not None and [rd.digest_type for rd in cds] == [4]
