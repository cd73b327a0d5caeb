"""The configs in examples/ work: `ztdns check` passes them, `ztdns explain` and `ztdns serve` run them.

Each example is checked in a copy of examples/ after running the `ztdns pki` commands its header tells users to run
(workloads.toml needs certificates), exactly as written, through the real console entry (`python -m ztdns`).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from fixtures.server import ServerProcess
from fixtures.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# agent.toml is the endpoint agent's own file format: `ztdns agent --config F check` checks it (test_agent_units).
GOOD = sorted(path.name for path in EXAMPLES.glob("*.toml") if path.name not in ("bad.toml", "agent.toml"))
PKI_COMMAND = re.compile(r"^#\s+(ztdns pki .*)$", re.MULTILINE)


def ztdns(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztdns", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of PATH that contains TEXT."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding a copy of examples/ in which every `ztdns pki` command of every header has been run."""
    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(EXAMPLES, root / "examples", ignore=shutil.ignore_patterns("pki", "*.jsonl"))
    for example in sorted((root / "examples").glob("*.toml")):
        for command in PKI_COMMAND.findall(example.read_text()):
            result = ztdns(*shlex.split(command)[1:], cwd=root)
            assert result.returncode == 0, f"{example.name}: `{command}` failed:\n{result.stderr}"
    yield root


def test_the_examples_are_there() -> None:
    assert {"minimal.toml", "office.toml", "workloads.toml"} <= set(GOOD)
    assert (EXAMPLES / "lists" / "ads.hosts").exists() and (EXAMPLES / "lists" / "trackers.adblock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", GOOD)
def test_example_passes_check(prepared: Path, name: str) -> None:
    result = ztdns("check", "--config", f"examples/{name}", cwd=prepared)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"examples/{name}: ok\n", "")


@pytest.mark.slow
def test_bad_example_names_line_12() -> None:
    result = ztdns("check", "--config", "examples/bad.toml")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "examples/bad.toml:12: policies.web.allow[3]: '*.*.x' is not a valid pattern\n"


@pytest.mark.slow
def test_workloads_without_certificates_names_the_key(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("pki"))
    result = ztdns("check", "--config", "examples/workloads.toml", cwd=tmp_path)
    line = line_of(EXAMPLES / "workloads.toml", 'cert = "pki/dns.crt"')
    assert result.returncode == 1
    assert re.fullmatch(
        rf"examples/workloads\.toml:{line}: listen\[0\]\.cert: \S+/examples/pki/dns\.crt: No such file or directory\n",
        result.stderr,
    ), result.stderr


def explain(*args: str, cwd: Path = REPO) -> dict[str, str]:
    result = ztdns("explain", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.isalpha() and key not in fields:
            fields[key] = value.strip()
    return fields


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "list_file", "entry", "rule", "index"),
    [
        ("ads.example.net", "ads.hosts", "0.0.0.0 ads.example.net", "deny:ads.example.net", 0),
        ("popups.example.com", "ads.hosts", "adserver.example.com popups.example.com", "deny:popups.example.com", 0),
        ("x.tracker.example.com", "trackers.adblock", "||tracker.example.com^", "deny:**.tracker.example.com", 1),
    ],
)
def test_office_explain_names_list_file_and_line(name: str, list_file: str, entry: str, rule: str, index: int) -> None:
    found = explain("--config", "examples/office.toml", "--client", "10.20.1.5", name)
    line = line_of(EXAMPLES / "lists" / list_file, entry)
    assert found["client"] == "10.20.1.5 -> identity staff (network 10.20.0.0/16)"
    assert found["decision"] == "deny"
    assert found["policy"] == "baseline"
    assert found["rule"] == rule
    assert found["from"] == f"lists/{list_file}:{line} (policies.baseline.deny_lists[{index}])"
    assert found["response"] == f'NXDOMAIN, EDE 15 (BLOCKED) "policy=baseline rule={rule} list=lists/{list_file}"'


@pytest.mark.slow
def test_office_identities_and_policies() -> None:
    office = ["--config", "examples/office.toml", "--client"]
    printer = explain(*office, "10.20.99.7", "www.example.org")
    assert printer["client"] == "10.20.99.7 -> identity printers (network 10.20.99.0/24)"
    assert (printer["decision"], printer["rule"], printer["response"]) == (
        "deny",
        "default-deny",
        'REFUSED, EDE 15 (BLOCKED) "policy=printers rule=default-deny"',
    )
    guest_allowed = explain(*office, "10.30.0.9", "en.wikipedia.org")
    assert guest_allowed["decision"] == "allow"
    line = line_of(EXAMPLES / "lists" / "guest-allowed.txt", "**.wikipedia.org")
    assert guest_allowed["from"] == f"lists/guest-allowed.txt:{line} (policies.guests.allow_lists[0])"
    guest_denied = explain(*office, "10.30.0.9", "www.example.net")
    assert guest_denied["response"] == "NXDOMAIN, EDE 15 (BLOCKED)"  # include_rule_text = false
    local = explain(*office, "10.20.1.5", "wiki.corp.example")
    assert (local["decision"], local["outcome"], local["response"]) == ("allow", "local", "NOERROR")
    stranger = explain(*office, "192.0.2.1", "www.example.com")
    assert stranger["response"] == 'REFUSED, EDE 18 (PROHIBITED) "client is not a known identity"'


@pytest.mark.slow
def test_workloads_exact_spiffe_id_beats_prefix(prepared: Path) -> None:
    workloads = ["--config", "examples/workloads.toml", "--client"]
    web = explain(*workloads, "spiffe://corp.example/ns/prod/sa/web", "db.svc.corp.example", cwd=prepared)
    assert web["client"].endswith("identity web (certificate spiffe://corp.example/ns/prod/sa/web)")
    assert (web["decision"], web["from"]) == ("deny", "policies.web.deny[0]")
    orders = explain(*workloads, "spiffe://corp.example/ns/prod/sa/orders", "db.svc.corp.example", cwd=prepared)
    assert "identity prod" in orders["client"] and "matches spiffe://corp.example/ns/prod/*" in orders["client"]
    assert (orders["decision"], orders["outcome"]) == ("allow", "local")
    report = explain(*workloads, "spiffe://corp.example/ns/batch/sa/report", "db.svc.corp.example", cwd=prepared)
    assert report["response"].startswith("REFUSED, EDE 15")


@pytest.mark.slow
def test_workloads_serves(prepared: Path) -> None:
    """The example really starts: rewritten to free loopback ports, every listener comes up with the generated
    certificates, and the loopback Do53 listener answers by the host identity's policy."""
    text = (prepared / "examples" / "workloads.toml").read_text()
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    dot, doh, do53, metrics = ports
    for old, new in (
        ('"0.0.0.0:853"', f'"127.0.0.1:{dot}"'),  # DoT on TCP and DoQ on UDP
        ('"0.0.0.0:443"', f'"127.0.0.1:{doh}"'),
        ('"127.0.0.1:53"', f'"127.0.0.1:{do53}"'),
        ('"127.0.0.1:9153"', f'"127.0.0.1:{metrics}"'),
    ):
        assert old in text
        text = text.replace(old, new)
    with ServerProcess(text, prepared / "examples", name="workloads-test.toml") as server:
        for endpoint in (f"dot 127.0.0.1:{dot}", f"doh 127.0.0.1:{doh}", f"doq 127.0.0.1:{dot}"):
            assert f"ztdns: listening on {endpoint}" in server.stderr
        answer = dns.query.udp(dns.message.make_query("api.svc.corp.example", "A"), "127.0.0.1", port=do53, timeout=5)
        assert [rr.to_text() for rr in answer.answer[0]] == ["10.96.10.1"]
        query = dns.message.make_query("www.example.com", "A", use_edns=0)
        denied = dns.query.udp(query, "127.0.0.1", port=do53, timeout=5)
        assert denied.rcode() == dns.rcode.NXDOMAIN
        assert [(o.code, o.text) for o in denied.options] == [(15, "policy=services rule=default-deny")]
