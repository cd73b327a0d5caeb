"""Attestation without a TPM: configfs-tsm against a fake kernel tree, software-only reports, measurements."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztdns.attest.measure import locked_packages, measure_config
from ztdns.attest.report import UNATTESTED, AttestationError, Attestor
from ztdns.attest.verify import References, summary, verify_report
from ztdns.config import ConfigError, parse_config

SPKI = hashlib.sha256(b"listener key").digest()


class FakeTsm:
    """Stands in for the kernel: a directory made under the root, with inblob written, gets an outblob that
    carries the report data at the SEV-SNP offset (0x50)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            for entry in self.root.iterdir():
                with contextlib.suppress(OSError):  # the reader removed it meanwhile
                    self._answer(entry)

    @staticmethod
    def _answer(entry: Path) -> None:
        inblob = entry / "inblob"
        if inblob.is_file() and inblob.stat().st_size == 64 and not (entry / "outblob").exists():
            (entry / "provider").write_text("sev_guest\n")
            (entry / "generation").write_text("1\n")
            (entry / "outblob").write_bytes(b"\x02" * 0x50 + inblob.read_bytes() + b"\x00" * 1024)


@pytest.fixture
def fake_tsm(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    fake = FakeTsm(root)
    fake.thread.start()
    yield root
    fake.stop.set()
    fake.thread.join()


def config_text(tsm_path: Path, evidence: str = "auto") -> str:
    return f"""
[attestation]
evidence = "{evidence}"
tsm_path = "{tsm_path}"

[policies.base]
deny_lists = ["blocked.txt"]
"""


def test_configfs_tsm_report_binds_the_qualifying_data(fake_tsm: Path, tmp_path: Path) -> None:
    (tmp_path / "blocked.txt").write_text("ads.example\n")
    config = parse_config(config_text(fake_tsm), base_dir=tmp_path)
    attestor = Attestor(config)
    assert attestor.kind == "tsm"  # "auto" finds the kernel's directory
    attestor.measure(config, "start")
    nonce = bytes(range(16))
    report = attestor.report(nonce, SPKI)
    assert report["evidence"]["type"] == "tsm" and report["evidence"]["provider"] == "sev_guest"
    assert list(fake_tsm.iterdir()) == []  # the request's directory is removed
    # The vendor signature is not checked by ztdns: refused unless accepted unverified, after the binding passed.
    checks = verify_report(report, nonce, SPKI, References())
    assert [c.name for c in checks] == ["nonce", "spki", "report", "quote-binding", "signature"]
    assert not checks[-1].ok and "vendor signature is not checked" in checks[-1].detail
    ok, line = summary(verify_report(report, nonce, SPKI, References(allow_unattested=True)))
    assert ok, line
    # Another nonce's hardware report spliced into this report does not carry this report's binding.
    other = attestor.report(b"other", SPKI)
    report["evidence"] = other["evidence"]
    ok, line = summary(verify_report(report, nonce, SPKI, References(allow_unattested=True)))
    assert not ok and line.startswith("FAILED quote-binding: replayed report"), line


def test_software_only_report_says_it_is_unattested(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path / "absent", "auto"), base_dir=tmp_path)
    attestor = Attestor(config)
    assert attestor.kind == "none"
    attestor.measure(config, "start")
    report = attestor.report(b"\x01", SPKI)
    assert report["evidence"] == {"type": "none", "statement": UNATTESTED}
    ok, line = summary(verify_report(report, b"\x01", SPKI, References()))
    assert not ok and line == "FAILED evidence: unattested: the report has evidence 'none' (software only)"
    assert summary(verify_report(report, b"\x01", SPKI, References(allow_unattested=True)))[0]
    # A report altered after it was made no longer matches its digest.
    report["config_digest"] = "0" * 64
    ok, line = summary(verify_report(report, b"\x01", SPKI, References(allow_unattested=True)))
    assert not ok and line.startswith("FAILED report:"), line


def test_config_digest_covers_list_content_not_location(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "blocked.txt").write_text("ads.example\n")
    text = config_text(tmp_path / "absent")
    first = measure_config(parse_config(text, "a/ztdns.toml", tmp_path / "a"))
    second = measure_config(parse_config(text, "b/ztdns.toml", tmp_path / "b"))
    assert first.digest == second.digest  # the same config and lists anywhere
    assert first.files == ({"key": "deny_lists", "path": "blocked.txt", "digest": first.files[0]["digest"]},)
    (tmp_path / "b" / "blocked.txt").write_text("ads.example\nmore.example\n")
    assert measure_config(parse_config(text, "b/ztdns.toml", tmp_path / "b")).digest != first.digest


def test_locked_packages_reads_a_hash_lock() -> None:
    lock = "# comment\nabc==1.2 \\\n    --hash=sha256:00\n    # via x\nDef-Ghi==3.0.0 ; python_version >= '3'\n"
    assert locked_packages(lock) == {"abc": "1.2", "def-ghi": "3.0.0"}


def test_evidence_that_cannot_be_had_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"<config>:1: attestation: evidence = 'tpm' needs tpm_tcti"):
        parse_config('[attestation]\nevidence = "tpm"\n')
    with pytest.raises(ConfigError, match="pcr: use PCR 16 or 23"):
        parse_config("[attestation]\npcr = 17\n")
    config = parse_config(config_text(tmp_path / "absent", "tsm"), base_dir=tmp_path)
    with pytest.raises(AttestationError, match="does not exist"):
        Attestor(config).measure(config, "start")


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["ztdns.config.agent", "ztdns.config.attestation", "ztdns.attest.report", "ztdns.attest.gate"]
)
def test_each_module_imports_first(module: str) -> None:
    """Regression: with the config models in ztdns.attest, importing the agent's config first was an import cycle
    (the agent's e2e tests start python in a namespace that way)."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
