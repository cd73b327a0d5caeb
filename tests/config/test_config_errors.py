"""Every kind of config mistake is reported as ``FILE:LINE: KEY: message`` by `ztdns check`, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ztdns.config import ConfigError, parse_config

BASE = """\
[identities.office]
networks = ["10.0.0.0/8"]
policies = ["web"]

[policies.web]
allow = ["**"]
"""


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    """Run the real command on TEXT written to tmp_path/ztdns.toml, from tmp_path; (exit code, stderr)."""
    (tmp_path / "ztdns.toml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "ztdns", "check", "--config", "ztdns.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BASE + "[server]\nwokers = 2\n",
            "ztdns.toml:8: server.wokers: unknown key (did you mean 'workers'? keys here: workers, state_dir, "
            "drain_seconds, max_udp_payload)",
            id="typo",
        ),
        pytest.param(
            BASE + '\n[cache]\nmax_entries = "lots"\n',
            "ztdns.toml:9: cache.max_entries: Input should be a valid integer, unable to parse string as an integer "
            "(got 'lots')",
            id="wrong-type",
        ),
        pytest.param(
            BASE + "[resolver]\nattempts = 20\n",
            "ztdns.toml:8: resolver.attempts: Input should be less than or equal to 10 (got 20)",
            id="out-of-range",
        ),
        pytest.param(
            BASE.replace('["10.0.0.0/8"]', '["10.0.0.0/8",\n  "10.0.0.0/33"]'),
            "ztdns.toml:3: identities.office.networks[1]: '10.0.0.0/33' is not an IP network "
            "(write an address or ADDRESS/PREFIX)",
            id="bad-network",
        ),
        pytest.param(
            BASE.replace('policies = ["web"]', 'policies = ["web", "nope"]'),
            "ztdns.toml:3: identities.office.policies[1]: unknown policy 'nope'",
            id="unknown-policy",
        ),
        pytest.param(
            BASE + '[unknown_clients]\naction = "identity"\nidentity = "guests"\n',
            "ztdns.toml:9: unknown_clients.identity: unknown identity 'guests'",
            id="unknown-clients-identity-missing",
        ),
        pytest.param(
            BASE + '[unknown_clients]\naction = "identity"\n',
            "ztdns.toml:7: unknown_clients: action = 'identity' needs identity = NAME",
            id="unknown-clients-identity-unset",
        ),
        pytest.param(
            BASE + "[server\nworkers = 2\n",
            "ztdns.toml:7: TOML syntax error: Expected ']' at the end of a table declaration (column 8)",
            id="toml-syntax",
        ),
        pytest.param(
            BASE + 'deny_lists = ["lists/none.txt"]\n',
            "ztdns.toml:7: policies.web.deny_lists[0]: cannot read list file '{dir}/lists/none.txt': "
            "No such file or directory",
            id="missing-list-file",
        ),
        pytest.param(
            BASE + '[identities.lab]\nnetworks = ["10.0.0.0/8"]\npolicies = ["web"]\n',
            "ztdns.toml:8: identities.lab.networks[0]: '10.0.0.0/8' already belongs to identity 'office'",
            id="same-network-twice",
        ),
        pytest.param(
            BASE + '[identities.w]\ncertificates = ["spiffe://x/*/web"]\npolicies = ["web"]\n',
            "ztdns.toml:8: identities.w.certificates[0]: 'spiffe://x/*/web': '*' may only end a prefix "
            "(spiffe://corp.example/ns/prod/*)",
            id="bad-certificate-pattern",
        ),
        pytest.param(
            BASE + '[[listen]]\naddress = "127.0.0.1:5300"\n[[listen]]\ntransport = "doq"\naddress = "127.0.0.1:5300"\n'
            'cert = "c.pem"\nkey = "k.pem"\n',
            "ztdns.toml:11: listen[1].address: UDP 127.0.0.1:5300 is already used by listen[0] (udp)",
            id="listener-clash",
        ),
        pytest.param(
            BASE + '[[listen]]\ntransport = "dot"\naddress = "127.0.0.1:8530"\ncert = "c.pem"\nkey = "k.pem"\n',
            "ztdns.toml:10: listen[0].cert: {dir}/c.pem: No such file or directory",
            id="missing-certificate",
        ),
        pytest.param(
            BASE + '[[local_zones]]\nname = "corp.example"\nrecords = ["www.corp.example. 60 IN A 10.0.0.1"]\n',
            "ztdns.toml:9: local_zones[0].records: corp.example: the zone needs an SOA record at corp.example.",
            id="zone-without-soa",
        ),
        pytest.param(
            BASE + '[[local_zones]]\nname = "corp.example"\nfile = "corp.zone"\n',
            "ztdns.toml:9: local_zones[0].file: corp.example: [Errno 2] No such file or directory: '{dir}/corp.zone'",
            id="missing-zone-file",
        ),
        pytest.param(
            BASE + '[log.query_log]\noutput = "no/such/dir/q.log"\n',
            "ztdns.toml:8: log.query_log.output: cannot write the query log to '{dir}/no/such/dir/q.log'",
            id="query-log-directory",
        ),
        pytest.param(
            'source = "elsewhere.toml"\n' + BASE,
            "ztdns.toml:1: source: unknown key (set by ztdns from the file's location)",
            id="loader-key",
        ),
    ],
)
def test_error_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    code, stderr = check(tmp_path, text)
    assert (code, stderr) == (1, expected.format(dir=tmp_path.resolve()) + "\n")


@pytest.mark.slow
def test_every_problem_is_listed(tmp_path: Path) -> None:
    code, stderr = check(tmp_path, BASE + '[server]\nworkers = 0\ndrain_seconds = "soon"\n[metrics]\nenabled = 3\n')
    assert code == 1
    assert [line.split(": ")[0:2] for line in stderr.splitlines()] == [
        ["ztdns.toml:8", "server.workers"],
        ["ztdns.toml:9", "server.drain_seconds"],
        ["ztdns.toml:11", "metrics.enabled"],
    ]


@pytest.mark.slow
def test_a_valid_file_passes(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ads.txt").write_text("ads.example\n")
    code, stderr = check(tmp_path, BASE + 'deny_lists = ["lists/ads.txt"]\n')
    assert (code, stderr) == (0, "")


def test_parse_config_raises_with_every_line() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE + "[cache]\nmin_ttl = 10\nmax_ttl = 5\n", "inline.toml")
    assert raised.value.problems == ["inline.toml:7: cache: min_ttl (10) is above max_ttl (5)"]
