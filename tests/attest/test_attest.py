"""Attestation end to end: `ztdns serve` with a real swtpm, the report fetched from the DoH well-known path,
checked by `ztdns attest verify`; each way it can be wrong is rejected by its own check."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import pytest

from fixtures.server import ServerProcess
from fixtures.swtpm import SwTpm, missing
from fixtures.tls import Pki, pki
from fixtures.unbound import free_port
from ztdns.agent.upstream import UpstreamError, Upstreams
from ztdns.attest.measure import PACKAGE_DIR, spki_sha256
from ztdns.attest.tpm import Tpm
from ztdns.attest.verify import References, client_context, fetch, summary, verify_report
from ztdns.config import parse_model
from ztdns.config.agent import AgentConfig

__all__ = ["pki"]

pytestmark = pytest.mark.slow


def server_config(pki: Pki, port: int, tcti: str, state: Path) -> str:
    return f"""
[server]
state_dir = "{state}"

[[listen]]
transport = "udp"
address = "127.0.0.1:{free_port()}"

[[listen]]
transport = "doh"
address = "127.0.0.1:{port}"
cert = "{pki.cert("server")}"
key = "{pki.key("server")}"

[resolver]
mode = "none"

[unknown_clients]
action = "identity"
identity = "anyone"

[identities.anyone]
networks = ["127.0.0.0/8"]
policies = ["base"]

[policies.base]
allow = ["**"]
deny_lists = ["blocked.txt"]

[[local_zones]]
name = "corp.test"
records = ["corp.test. 300 IN SOA ns.corp.test. h.corp.test. 1 3600 600 86400 300", "www.corp.test. 300 IN A 192.0.2.7"]

[log.query_log]
output = "off"

[metrics]
enabled = false

[attestation]
evidence = "tpm"
tpm_tcti = "{tcti}"
pcr = 23
"""


def ztdns(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    command = [sys.executable, "-m", "ztdns", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)
    return done.returncode, done.stdout + done.stderr


@dataclass
class Attested:
    server: ServerProcess
    tpm: SwTpm
    port: int
    directory: Path
    ak: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reference(self) -> dict[str, Any]:
        code, out = ztdns("attest", "show", "--config", str(self.server.config_path))
        assert code == 0, out
        report: dict[str, Any] = json.loads(out)
        return report

    def reload(self) -> None:
        """SIGHUP, and wait until the reload's measurement is in the event log."""
        log = self.directory / "state" / "attestation" / "pcr23-events.jsonl"
        events = len(log.read_text().splitlines()) + 1
        self.server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while len(log.read_text().splitlines()) < events:
            assert time.monotonic() < deadline, self.server.stderr
            time.sleep(0.05)


def start_attested(pki: Pki, directory: Path) -> Attested:
    problem = missing()
    if problem:
        pytest.skip(problem)
    directory.mkdir(exist_ok=True)
    tpm = SwTpm(directory).start()
    port = free_port()
    (directory / "blocked.txt").write_text("ads.example\ntracker.example\n")
    server = ServerProcess(server_config(pki, port, tpm.tcti, directory / "state"), directory)
    try:
        server.start()
    except AssertionError:
        tpm.stop()
        raise
    ak = directory / "ak.pem"
    ak.write_bytes(Tpm(tpm.tcti, 0x81010020, 23).ak_public())  # the operator enrols the AK from the TPM itself
    return Attested(server, tpm, port, directory, ak)


@pytest.fixture(scope="module")
def attested(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attested]:
    running = start_attested(pki, tmp_path_factory.mktemp("attested"))
    yield running
    assert running.server.stop() == 0, running.server.stderr
    running.tpm.stop()


def verify_cli(attested: Attested, reference: dict[str, Any], *extra: str) -> tuple[int, str]:
    return ztdns(
        "attest", "verify", attested.url,
        "--code-digest", reference["code_digest"],
        "--config-digest", reference["config_digest"],
        "--ak", str(attested.ak),
        *extra,
    )  # fmt: skip


def test_report_served_on_doh_verifies(attested: Attested, pki: Pki) -> None:
    reference = attested.reference()
    assert reference["evidence"]["type"] == "none"  # `attest show` measures here; only the server attests
    code, out = verify_cli(attested, reference, "--ca", str(pki.ca))
    assert code == 0, out
    assert out.splitlines()[-1].startswith("verified: nonce, spki, report, signature, quote-binding, pcr-replay"), out
    assert "(pinned)" in out
    fetched = fetch(attested.url, client_context(), nonce=bytes.fromhex("00ff"))
    report = fetched.report
    assert report["nonce"] == "00ff"
    assert report["tls_spki"] == spki_sha256(pki.cert("server").read_bytes()).hex() == fetched.spki.hex()
    assert report["evidence"]["type"] == "tpm"
    assert report["evidence"]["event_log"][0]["event"] == "start"
    assert {entry["path"] for entry in report["config_files"]} == {"blocked.txt"}


def test_report_over_http2_and_bad_nonces(attested: Attested) -> None:
    """The route answers on both DoH engines; a bad nonce is a 400, other paths are still 404."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    base = f"{attested.url}/.well-known/ztdns/attestation"

    def get(url: str) -> tuple[str, str]:
        command = [curl, "-sk", "--http2", "-w", "\n%{http_code} %{http_version}", url]
        out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout
        body, _, status = out.rpartition("\n")
        return body, status

    body, status = get(f"{base}?nonce=abcd")
    assert status == "200 2", status
    assert json.loads(body)["nonce"] == "abcd"
    assert get(f"{base}?nonce=xyz")[1] == "400 2"
    assert get(f"{base}?nonce={'00' * 65}")[1] == "400 2"
    assert get(f"{attested.url}/.well-known/other")[1] == "404 2"


def references(attested: Attested, reference: dict[str, Any]) -> References:
    return References(
        frozenset({reference["code_digest"]}), frozenset({reference["config_digest"]}), attested.ak.read_bytes()
    )


def failed(checks: list[Any]) -> tuple[str, str]:
    ok, line = summary(checks)
    assert not ok
    return checks[-1].name, line


def test_stale_nonce_is_rejected(attested: Attested) -> None:
    old = fetch(attested.url, client_context())
    fresh_nonce = bytes(range(32))
    name, line = failed(verify_report(old.report, fresh_nonce, old.spki, references(attested, attested.reference())))
    assert name == "nonce", line
    assert "stale nonce" in line


def test_replayed_quote_is_rejected(attested: Attested) -> None:
    """A fresh report with the quote of an earlier one: the nonce and SPKI are right, the quote is not for them."""
    earlier = fetch(attested.url, client_context())
    fresh = fetch(attested.url, client_context())
    for key in ("quote", "signature", "qualifying_data"):
        fresh.report["evidence"][key] = earlier.report["evidence"][key]
    refs = references(attested, attested.reference())
    name, line = failed(verify_report(fresh.report, fresh.nonce, fresh.spki, refs))
    assert name == "quote-binding", line
    assert "replayed quote" in line


def test_wrong_spki_is_rejected(attested: Attested, pki: Pki) -> None:
    """The report relayed by someone holding another key (a TLS-terminating proxy): the binding names the key."""
    fetched = fetch(attested.url, client_context())
    other = spki_sha256(pki.cert("server2").read_bytes())
    name, line = failed(verify_report(fetched.report, fetched.nonce, other, references(attested, attested.reference())))
    assert name == "spki", line
    assert "wrong SPKI" in line


def test_unpinned_attestation_key_is_rejected(attested: Attested, tmp_path: Path) -> None:
    """A quote from another TPM (here: another swtpm) does not pass for ours."""
    other = SwTpm(tmp_path).start()
    try:
        foreign = Tpm(other.tcti, 0x81010020, 23).ak_public()
    finally:
        other.stop()
    fetched = fetch(attested.url, client_context())
    refs = References(ak_pem=foreign)
    name, line = failed(verify_report(fetched.report, fetched.nonce, fetched.spki, refs))
    assert name == "signature", line


def test_list_file_edited_after_start_is_a_config_digest_mismatch(attested: Attested) -> None:
    reference = attested.reference()
    blocked = attested.directory / "blocked.txt"
    original = blocked.read_text()
    blocked.write_text(original + "allowed-by-nobody.example\n")
    try:
        attested.reload()
        code, out = verify_cli(attested, reference)
        assert code == 1, out
        assert "FAILED config-digest: config digest mismatch" in out.splitlines()[-1], out
        assert re.search(r"ok   pcr-replay: \d+ events", out)  # the edit is in the TPM's event log, not hidden
    finally:
        blocked.write_text(original)
    attested.reload()
    code, out = verify_cli(attested, reference)
    assert code == 0, out


def test_modified_installed_module_is_a_code_digest_mismatch(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server runs a copy of the package with one module changed; the reference is the reviewed tree."""
    copy = tmp_path / "site"
    shutil.copytree(PACKAGE_DIR, copy / "ztdns", ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "ztdns" / "policy" / "stage.py").open("a") as module:
        module.write("\n# a line nobody reviewed\n")
    monkeypatch.setenv("PYTHONPATH", str(copy))
    modified = start_attested(pki, tmp_path / "run")
    try:
        monkeypatch.delenv("PYTHONPATH")
        code, out = verify_cli(modified, modified.reference())
        assert code == 1, out
        assert "FAILED code-digest: code digest mismatch" in out.splitlines()[-1], out
    finally:
        assert modified.server.stop() == 0, modified.server.stderr
        modified.tpm.stop()


def test_agent_uses_an_attested_resolver_only_while_it_verifies(attested: Attested, pki: Pki) -> None:
    """require_attestation: used while the report verifies, refused once the server runs another config, used
    again as soon as it runs the reviewed one (no agent restart)."""
    reference = attested.reference()
    agent_config = parse_model(
        AgentConfig,
        f"""
[stub]
timeout = 5.0

[[server]]
address = "127.0.0.1:{attested.port}"
hostname = "dns.test"
transport = "doh"

[server.require_attestation]
code_digest = ["{reference["code_digest"]}"]
config_digest = ["{reference["config_digest"]}"]
ak = "{attested.ak}"
interval = 0.3

[tls]
ca_file = "{pki.ca}"
""",
    )
    query = dns.message.make_query("www.corp.test", "A").to_wire()

    async def ask(upstreams: Upstreams) -> str:
        try:
            response = dns.message.from_wire(await upstreams.query(query))
        except UpstreamError as exc:
            return f"refused: {exc}"
        return response.answer[0].to_text() if response.answer else "no answer"

    async def scenario() -> list[str]:
        upstreams = Upstreams(agent_config)
        results = [await ask(upstreams)]
        blocked = attested.directory / "blocked.txt"
        original = blocked.read_text()
        blocked.write_text(original + "changed.example\n")
        try:
            await asyncio.to_thread(attested.reload)
            await asyncio.sleep(0.4)  # the last verification is due again
            results.append(await ask(upstreams))
        finally:
            blocked.write_text(original)
        await asyncio.to_thread(attested.reload)
        await asyncio.sleep(0.4)
        results.append(await ask(upstreams))
        await upstreams.close()
        return results

    used, refused, recovered = asyncio.run(scenario())
    assert used == "www.corp.test. 300 IN A 192.0.2.7", used
    assert refused.startswith("refused: ") and "FAILED config-digest" in refused, refused
    assert recovered == "www.corp.test. 300 IN A 192.0.2.7", recovered
