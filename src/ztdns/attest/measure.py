"""Measurements: what code runs (code digest), with which configuration (config digest), behind which keys.

Code: the ``ztdns`` package's files (those a wheel holds: ``*.py``, ``py.typed``, ``data/*``), hashed from disk.
Installed from a wheel, the files its RECORD lists are hashed anew (RECORD's own hashes are only compared: a
modified module must change the digest) — ``mode = "record"``; installed editable, the source tree is hashed —
``mode = "editable"``. Both give the same digest for the same files. Then every runtime dependency's installed
files (RECORD-listed, bytecode caches and installer bookkeeping left out), the interpreter binary, the runtime
lock file and the SBOM where they are found.

Config: a canonical JSON of the validated config (sorted keys, no location-dependent fields) plus the content
of every file it names that changes what is answered (list files, zone files, trust anchors, root hints, CA
bundles). Listener certificates are not in it (they rotate): their SPKI hashes are reported on their own.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

import ztdns
from ztdns.config import Config

PACKAGE_DIR: Path = Path(str(ztdns.__file__)).resolve().parent
# A source checkout (editable install): the repository root, where the lock files and build/ are.
_CHECKOUT: Path | None = PACKAGE_DIR.parents[1] if (PACKAGE_DIR.parents[1] / "pyproject.toml").exists() else None

# Config keys naming files whose content decides answers. Private keys, client certificates, CRLs (refreshed
# often) and outputs are not measured.
MEASURED_FILE_KEYS = frozenset({"deny_lists", "allow_lists", "file", "trust_anchors", "root_hints", "ca"})
_SKIPPED_RECORD_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def canonical_json(value: object) -> bytes:
    """The one byte form hashed everywhere: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class Component:
    """One measured part: its name, where it was found, and its digest."""

    name: str
    source: str
    digest: str
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "source": self.source, "digest": self.digest}
        if self.notes:
            data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class CodeMeasurement:
    digest: str
    components: tuple[Component, ...]

    def as_json(self) -> list[dict[str, object]]:
        return [component.as_json() for component in self.components]


@dataclass(frozen=True)
class ConfigMeasurement:
    digest: str
    files: tuple[dict[str, str], ...]
    policy_revision: str


@dataclass(frozen=True)
class Listener:
    transport: str
    address: str
    spki: str  # hex SHA-256 of the certificate's SubjectPublicKeyInfo


@dataclass
class Measurements:
    """Everything measured at one start or reload."""

    code: CodeMeasurement
    config: ConfigMeasurement
    listeners: list[Listener] = field(default_factory=list)


def _digest_of_listing(entries: list[tuple[str, str]]) -> str:
    """Digest of (relative path, file digest) pairs, independent of the order they were found in."""
    return sha256_hex("".join(f"{digest}  {name}\n" for name, digest in sorted(entries)).encode())


def _wheel_files(package: Path) -> Iterator[Path]:
    """The package's files a wheel holds (see [tool.setuptools.package-data] in pyproject.toml)."""
    for path in package.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        relative = path.relative_to(package)
        if path.suffix == ".py" or relative.as_posix() == "py.typed" or relative.parts[0] == "data":
            yield path


def _record(dist: metadata.Distribution) -> dict[str, str]:
    """RECORD's hashes by path (hex SHA-256), for the files it gives one for."""
    text = dist.read_text("RECORD") or ""
    hashes = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[1].startswith("sha256="):
            raw = base64.urlsafe_b64decode(row[1][7:] + "=" * (-len(row[1][7:]) % 4))
            hashes[row[0]] = raw.hex()
    return hashes


def package_component() -> Component:
    entries = [(path.relative_to(PACKAGE_DIR).as_posix(), file_digest(path)) for path in _wheel_files(PACKAGE_DIR)]
    digest = _digest_of_listing(entries)
    try:
        dist = metadata.distribution("ztdns")
    except metadata.PackageNotFoundError:
        return Component("ztdns", f"source tree {PACKAGE_DIR} (not installed)", digest)
    record = _record(dist)
    listed = {name.removeprefix("ztdns/"): value for name, value in record.items() if name.startswith("ztdns/")}
    if not listed:
        return Component("ztdns", f"editable: source files under {PACKAGE_DIR} a wheel would hold", digest)
    found = dict(entries)
    notes = [f"differs from RECORD: {name}" for name, value in sorted(listed.items()) if found.get(name) != value]
    notes += [f"not in RECORD: {name}" for name in sorted(found.keys() - listed.keys())]
    return Component(
        "ztdns", f"record: {dist.locate_file('ztdns')} (files its RECORD lists, hashed anew)", digest, tuple(notes)
    )


def _runtime_requirements() -> list[str]:
    """Runtime dependency names: from the SBOM when found, else from the runtime lock."""
    sbom = sbom_path()
    if sbom is not None:
        try:
            document = json.loads(sbom.read_text(encoding="utf-8"))
            return sorted(str(component["name"]) for component in document.get("components", []))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    lock = lock_path()
    if lock is None:
        return []
    return sorted(locked_packages(lock.read_text(encoding="utf-8")))


def locked_packages(lock_text: str) -> dict[str, str]:
    """``name: version`` of every ``name==version`` line of a pip requirements lock."""
    packages = {}
    for line in lock_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            packages[name.strip().lower()] = rest.split()[0].rstrip("\\").strip()
    return packages


def dependencies_component() -> Component:
    names = _runtime_requirements()
    entries: list[tuple[str, str]] = []
    missing = []
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for path in dist.files or []:
            text = path.as_posix()
            if text.startswith("..") or path.suffix == ".pyc" or path.name in _SKIPPED_RECORD_FILES:
                continue
            located = Path(str(dist.locate_file(path)))
            if located.is_file():
                entries.append((f"{dist.metadata['Name']}/{text}", file_digest(located)))
    notes = tuple(f"not installed: {name}" for name in missing)
    source = f"installed files of {len(names) - len(missing)} runtime packages (RECORD-listed, hashed anew)"
    return Component("dependencies", source, _digest_of_listing(entries), notes)


def interpreter_component() -> Component:
    binary = Path(sys.executable).resolve()
    return Component("interpreter", str(binary), file_digest(binary))


def lock_path() -> Path | None:
    """The runtime lock of a source checkout (an installed wheel has none: its SBOM lists the same)."""
    if _CHECKOUT is not None and (_CHECKOUT / "requirements.lock").is_file():
        return _CHECKOUT / "requirements.lock"
    return None


def sbom_path() -> Path | None:
    """The CycloneDX SBOM: shipped in the package (``ztdns/data``), else the checkout's ``build/``."""
    candidates: list[Path] = [PACKAGE_DIR / "data" / "sbom.cdx.json"]
    if _CHECKOUT is not None:
        candidates.append(_CHECKOUT / "build" / "sbom.cdx.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def measure_code() -> CodeMeasurement:
    components = [package_component(), dependencies_component(), interpreter_component()]
    for name, path in (("lock", lock_path()), ("sbom", sbom_path())):
        if path is not None:
            components.append(Component(name, str(path), file_digest(path)))
        else:
            components.append(Component(name, "not found", sha256_hex(b"")))
    digest = sha256_hex(canonical_json([[c.name, c.digest] for c in components]))
    return CodeMeasurement(digest, tuple(components))


def canonical_config(config: Config) -> dict[str, Any]:
    """The validated config as data, without where it was read from (the same config anywhere hashes alike)."""
    data: dict[str, Any] = config.model_dump(mode="json", exclude={"base_dir", "source"})
    return data


def _named_files(value: object, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, path) for every measured file key in the config data, depth first in document order."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from _named_files(inner, str(name))
    elif isinstance(value, list):
        for inner in value:
            yield from _named_files(inner, key)
    elif isinstance(value, str) and key in MEASURED_FILE_KEYS and value:
        yield key, value


def measure_config(config: Config) -> ConfigMeasurement:
    data = canonical_config(config)
    files = []
    for key, written in _named_files(data):
        path = config.base_dir / written
        try:
            digest = file_digest(path)
        except OSError as exc:
            digest = f"unreadable: {exc.strerror or exc}"
        files.append({"key": key, "path": written, "digest": digest})
    digest = sha256_hex(canonical_json({"config": data, "files": files}))
    revision = config.attestation.policy_revision or f"config:{digest[:16]}"
    return ConfigMeasurement(digest, tuple(files), revision)


def spki_sha256(cert_pem: bytes) -> bytes:
    """SHA-256 of the first certificate's SubjectPublicKeyInfo (what RFC 7858 pins and the quote binds)."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return spki_of(certificate)


def spki_of(certificate: x509.Certificate) -> bytes:
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def measure_listeners(config: Config) -> list[Listener]:
    listeners = []
    for listen in config.listen:
        if listen.cert:
            try:
                pem = (config.base_dir / listen.cert).read_bytes()
                spki = spki_sha256(pem).hex()
            except (OSError, ValueError) as exc:
                spki = f"unreadable: {exc}"
            listeners.append(Listener(listen.transport, listen.address, spki))
    return listeners


def measure(config: Config) -> Measurements:
    """Everything, from disk now (start and reload run this in a thread: it reads every measured file)."""
    return Measurements(measure_code(), measure_config(config), measure_listeners(config))
