"""With ``workers = N`` a config change through the admin API (served by worker 0) reaches every worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dns.rcode
import pytest

from fixtures.admin import TOKENS, make_admin_setup
from fixtures.server import ServerProcess, udp_query
from fixtures.unbound import free_port
from ztdns.cli import main


@pytest.mark.slow
def test_a_change_reaches_every_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin, port = free_port(), free_port()
    setup = make_admin_setup(tmp_path, f"127.0.0.1:{admin}", f"127.0.0.1:{port}")
    text = setup.config.read_text().replace('state_dir = "state"', 'state_dir = "state"\nworkers = 2')
    with ServerProcess(text, tmp_path) as server:
        # Each query comes from a new source port: SO_REUSEPORT spreads them over both workers.
        assert {udp_query(port, "blocked.example.com").rcode() for _ in range(20)} == {dns.rcode.NXDOMAIN}
        common = ["--url", f"https://127.0.0.1:{admin}", "--ca", str(tmp_path / "pki" / "ca.crt")]
        assert main(["api", "GET", "/v1/config", *common, "--token", TOKENS["viewer"]]) == 0
        etag = json.loads(capsys.readouterr().out)["etag"]
        new = tmp_path / "new.toml"
        new.write_text(server.config_path.read_text().replace('deny = ["blocked.example.com"]', "deny = []"))
        put = ["api", "PUT", "/v1/config", *common, "--token", TOKENS["operator"], "--data", str(new)]
        assert main([*put, "--if-match", etag]) == 0
        assert "SIGHUP sent to the parent" in capsys.readouterr().out
        deadline = time.monotonic() + 10
        while {udp_query(port, "blocked.example.com").rcode() for _ in range(20)} != {dns.rcode.NOERROR}:
            assert time.monotonic() < deadline, server.stderr
            time.sleep(0.2)
