"""Signed, versioned config bundles: one config file and every file it names, signed with Ed25519.

A bundle is JSON ``{"payload": base64, "signature": base64}``; the payload is JSON with the role (``resolver`` or
``agent``), the revision, when and by whom it was made, the config text and its files. Files the config names by
a relative path inside its directory keep that path; any other (absolute, or outside it) is stored under
``_files/`` and the config text names it there (same lines: errors still point at the operator's line).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROLES = ("resolver", "agent")
FILES_DIR = "_files"


class BundleError(Exception):
    """A bundle that must not be applied: bad signature, older revision, malformed."""


@dataclass(frozen=True)
class Bundle:
    role: str
    revision: int
    source: str  # the config file's name as the operator checked it (errors name it)
    config: str  # TOML text
    files: dict[str, bytes] = field(default_factory=dict)
    created: float = 0.0
    publisher: str = ""

    def digest(self) -> str:
        """SHA-256 over the config text and files: what `ztdns control status` shows next to the revision."""
        hasher = hashlib.sha256(self.config.encode())
        for name in sorted(self.files):
            hasher.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return hasher.hexdigest()

    def payload(self) -> bytes:
        document = {
            "role": self.role,
            "revision": self.revision,
            "source": self.source,
            "config": self.config,
            "files": {name: base64.b64encode(data).decode() for name, data in sorted(self.files.items())},
            "created": self.created,
            "publisher": self.publisher,
        }
        return json.dumps(document, sort_keys=True).encode()

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        payload = self.payload()
        envelope = {
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(key.sign(payload)).decode(),
        }
        return json.dumps(envelope).encode()

    def write(self, directory: Path) -> Path:
        """The config and its files under ``directory`` (made afresh); returns the config's path."""
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in self.files.items():
            target = directory / _safe(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        config = directory / _safe(PurePosixPath(self.source).name or "ztdns.toml")
        config.write_text(self.config, encoding="utf-8")
        return config


def _safe(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BundleError(f"file name {name!r} escapes the bundle")
    return str(path)


def verify(data: bytes, public_key: Ed25519PublicKey) -> Bundle:
    """The bundle in ``data`` if ``public_key`` signed it. Raises BundleError saying why not."""
    try:
        envelope = json.loads(data)
        payload = base64.b64decode(envelope["payload"], validate=True)
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BundleError("not a bundle (malformed envelope)") from None
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise BundleError("bad signature: not signed by the pinned public key") from None
    try:
        document: dict[str, Any] = json.loads(payload)
        bundle = Bundle(
            role=str(document["role"]),
            revision=int(document["revision"]),
            source=str(document["source"]),
            config=str(document["config"]),
            files={str(k): base64.b64decode(v, validate=True) for k, v in document["files"].items()},
            created=float(document["created"]),
            publisher=str(document["publisher"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError("signed, but the payload is malformed") from None
    if bundle.role not in ROLES:
        raise BundleError(f"unknown role {bundle.role!r}")
    for name in bundle.files:
        _safe(name)
    return bundle


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def pack(config_path: Path, role: str, revision: int, publisher: str = "") -> Bundle:
    """A bundle of the config at ``config_path`` and every existing file one of its string values names.

    The caller checks the config first (``ztdns check``'s checks); this only gathers."""
    text = config_path.read_text(encoding="utf-8")
    base = config_path.resolve().parent
    files: dict[str, bytes] = {}
    for value in sorted(set(_strings(tomllib.loads(text)))):
        if not value or "\n" in value:
            continue
        candidate = base / value
        try:
            if not candidate.is_file():
                continue
        except OSError:
            continue
        relative = PurePosixPath(value)
        if relative.is_absolute() or ".." in relative.parts:
            name = f"{FILES_DIR}/{hashlib.sha256(value.encode()).hexdigest()[:12]}-{relative.name}"
            for quote in ('"', "'"):
                text = text.replace(f"{quote}{value}{quote}", f"{quote}{name}{quote}")
        else:
            name = os.path.normpath(value)
        files[name] = candidate.read_bytes()
    return Bundle(role, revision, config_path.name, text, files, time.time(), publisher)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key")
    return key


def new_key_pair(private_path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
