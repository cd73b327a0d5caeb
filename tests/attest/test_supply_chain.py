"""The supply chain users can check: the SBOM lists every locked runtime package, the wheel is reproducible and
ships the SBOM and LICENSE, and an installed wheel measures like the source tree it was built from."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ztdns.attest.measure import locked_packages

ROOT = Path(__file__).resolve().parents[2]
CYCLONEDX = Path(sys.executable).parent / "cyclonedx-py"

# These tests run the ztdns command, cyclonedx-py or a wheel build as processes.
pytestmark = pytest.mark.slow


def make_sbom(root: Path, output: Path) -> None:
    """What scripts/dev.sh test runs."""
    if not CYCLONEDX.exists():
        pytest.skip("cyclonedx-py is not installed (requirements-dev.lock: cyclonedx-bom)")
    subprocess.run(
        [str(CYCLONEDX), "requirements", "--pyproject", "pyproject.toml", "--output-reproducible", "-o", str(output),
         "requirements.lock"],
        cwd=root, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
    )  # fmt: skip


def test_sbom_lists_every_locked_runtime_package(tmp_path: Path) -> None:
    sbom = tmp_path / "sbom.cdx.json"
    make_sbom(ROOT, sbom)
    document = json.loads(sbom.read_text())
    assert document["bomFormat"] == "CycloneDX"
    root = document["metadata"]["component"]
    assert (root["name"], root["licenses"][0]["license"]["id"]) == ("ztdns", "Apache-2.0")
    listed = {component["name"].lower(): component["version"] for component in document["components"]}
    locked = locked_packages((ROOT / "requirements.lock").read_text())
    assert listed == locked
    for component in document["components"]:  # each with the lock's hashes
        assert component["externalReferences"][0]["hashes"], component["name"]
    # Reproducible: the same lock gives the same bytes (so its digest can be a reference value).
    again = tmp_path / "again.json"
    make_sbom(ROOT, again)
    assert again.read_bytes() == sbom.read_bytes()


def test_docs_list_every_debian_package_dev_sh_installs() -> None:
    script = (ROOT / "scripts" / "dev.sh").read_text()
    listed = re.search(r"debian_packages=\(([^)]*)\)", script)
    assert listed is not None
    table = {
        line.split("|")[1].strip()
        for line in (ROOT / "docs" / "attestation.md").read_text().splitlines()
        if line.startswith("| ") and line.count("|") == 4
    }
    assert set(listed.group(1).split()) <= table


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_version_verbose_prints_code_digest_and_sbom() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ztdns", "version", "--verbose"], check=True, capture_output=True, text=True
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ztdns ")
    assert lines[1].startswith("code digest: ") and len(lines[1].split()[-1]) == 64
    assert lines[-1].startswith("sbom: ")


def source_copy(destination: Path) -> Path:
    """What a wheel is built from: the project files, with the SBOM generated into the package."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "requirements.lock"):
        shutil.copy(ROOT / name, destination / name)
    shutil.copytree(
        ROOT / "src", destination / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "sbom.cdx.json")
    )
    (destination / "src" / "ztdns" / "data").mkdir(exist_ok=True)
    make_sbom(destination, destination / "src" / "ztdns" / "data" / "sbom.cdx.json")
    return destination


def build_wheel(source: Path, output: Path) -> Path:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(output),
         str(source)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    (wheel,) = output.glob("ztdns-*.whl")
    return wheel


def package_measurement(path: Path) -> list[str]:
    """[digest, mode] of the ztdns package found first on ``path``."""
    probe = "from ztdns.attest.measure import package_component as p; c = p(); print(c.digest, c.source.split(':')[0])"
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env
    ).stdout.split()


@pytest.mark.slow
def test_wheel_is_reproducible_ships_sbom_and_measures_like_its_source(tmp_path: Path) -> None:
    first = build_wheel(source_copy(tmp_path / "a"), tmp_path / "out-a")
    second = build_wheel(source_copy(tmp_path / "b"), tmp_path / "out-b")
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(second.read_bytes()).hexdigest(), "two builds of the same source differ"
    names = zipfile.ZipFile(first).namelist()
    assert "ztdns/data/sbom.cdx.json" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE") for name in names)
    # Installed from the wheel, the package measures from its RECORD exactly as the source tree does editable.
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(first)],
        check=True,
        capture_output=True,
    )
    installed, source = package_measurement(target), package_measurement(tmp_path / "a" / "src")
    assert installed[1] == "record" and installed[0] == source[0]
