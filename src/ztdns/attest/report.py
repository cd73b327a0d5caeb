"""The attestation report: measurements, bound to a verifier's nonce and the TLS key by the evidence.

At start and on every reload the server measures itself (:mod:`.measure`); with a TPM, worker 0 extends the
configured PCR with a digest of that measurement and appends it to an event log in ``server.state_dir`` (at
start the PCR is reset and the log begun afresh). A report is the latest measurement plus the verifier's nonce
and the serving listener's SPKI; its digest and those two make the qualifying data

    qualifying_data = SHA-256(nonce ‖ SPKI-SHA-256 ‖ report_digest)

that the TPM quote (or the configfs-tsm report data) carries, so a report can be neither replayed to another
verifier nor moved behind another TLS key.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ztdns import __version__
from ztdns.attest import tpm, tsm
from ztdns.attest.measure import Measurements, canonical_json, measure
from ztdns.config import Config
from ztdns.config.attestation import AttestationConfig

FORMAT = "ztdns-attestation/1"
PATH = "/.well-known/ztdns/attestation"
UNATTESTED = (
    "software-only report: nothing in it is attested by hardware; the server could have written any of it. "
    "It says what the server claims to run, not what it runs."
)
MAX_NONCE = 64


class AttestationError(Exception):
    """Evidence could not be produced (the TPM or configfs-tsm failed)."""


def event_digest(event: dict[str, Any]) -> bytes:
    """What one event extends the PCR with: the hash of its measured fields, so its fields cannot lie."""
    fields = {key: event[key] for key in ("event", "code_digest", "config_digest", "policy_revision")}
    return hashlib.sha256(canonical_json(fields)).digest()


def report_digest(report: dict[str, Any]) -> bytes:
    body = {key: value for key, value in report.items() if key not in ("evidence", "report_digest")}
    return hashlib.sha256(canonical_json(body)).digest()


def qualifying_data(nonce: bytes, spki: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(nonce + spki + digest).digest()


class Attestor:
    """One process's measurements and evidence source. ``measure`` and ``report`` block (files, the TPM):
    servers call them in a thread."""

    def __init__(self, config: Config, worker: int = 0, evidence: str | None = None) -> None:
        self.settings: AttestationConfig = config.attestation
        self.worker = worker
        self.kind = evidence or self._evidence_kind(self.settings)
        self.tpm = (
            tpm.Tpm(self.settings.tpm_tcti, self.settings.ak_handle, self.settings.pcr) if self.kind == "tpm" else None
        )
        state = Path(config.server.state_dir)
        self.log_path = (config.base_dir / state) / "attestation" / f"pcr{self.settings.pcr}-events.jsonl"
        self.measurements: Measurements | None = None
        self.event = ""
        self.ak: bytes | None = None  # the AK's public key, read once: it does not change for a handle

    @staticmethod
    def _evidence_kind(settings: AttestationConfig) -> str:
        if settings.evidence != "auto":
            return settings.evidence
        if tsm.available(Path(settings.tsm_path)):
            return "tsm"
        return "tpm" if settings.tpm_tcti else "none"

    @contextmanager
    def _locked_log(self) -> Iterator[None]:
        """TPM operations and the event log under one lock, so a quote and the log it is checked against agree
        (workers share both)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with (self.log_path.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def measure(self, config: Config, event: str) -> Measurements:
        """Measure now; with a TPM, worker 0 records the event (``start`` resets the PCR and the log)."""
        if self.kind == "tsm" and not tsm.available(Path(self.settings.tsm_path)):
            raise AttestationError(f"configfs-tsm: {self.settings.tsm_path} does not exist (not a confidential VM?)")
        measurements = measure(config)
        self.event = event
        if self.tpm is not None and self.worker == 0:
            entry: dict[str, Any] = {
                "event": event,
                "code_digest": measurements.code.digest,
                "config_digest": measurements.config.digest,
                "policy_revision": measurements.config.policy_revision,
                "time": int(time.time()),
            }
            entry["digest"] = event_digest(entry).hex()
            try:
                with self._locked_log():
                    if event == "start":
                        self.tpm.reset()
                        self.log_path.write_text("")
                    self.ak = self.tpm.ak_public()  # made now rather than on the first request
                    self.tpm.extend(bytes.fromhex(entry["digest"]))
                    with self.log_path.open("a") as log:
                        log.write(json.dumps(entry, sort_keys=True) + "\n")
            except (tpm.TpmError, OSError) as exc:
                raise AttestationError(f"recording the measurement in the TPM: {exc}") from exc
        self.measurements = measurements
        return measurements

    def report(self, nonce: bytes, spki: bytes) -> dict[str, Any]:
        """The report for ``nonce``, bound to the listener key whose SPKI hash is ``spki`` (b"" = none)."""
        measurements = self.measurements
        if measurements is None:
            raise AttestationError("nothing measured yet")
        if len(nonce) > MAX_NONCE:
            raise AttestationError(f"nonce longer than {MAX_NONCE} bytes")
        report: dict[str, Any] = {
            "format": FORMAT,
            "version": __version__,
            "nonce": nonce.hex(),
            "issued_at": int(time.time()),
            "code_digest": measurements.code.digest,
            "config_digest": measurements.config.digest,
            "policy_revision": measurements.config.policy_revision,
            "measured_at": self.event,
            "tls_spki": spki.hex(),
            "listeners": [
                {"transport": item.transport, "address": item.address, "spki": item.spki}
                for item in measurements.listeners
            ],
            "code": measurements.code.as_json(),
            "config_files": list(measurements.config.files),
        }
        digest = report_digest(report)
        report["report_digest"] = digest.hex()
        report["evidence"] = self._evidence(qualifying_data(nonce, spki, digest))
        return report

    def _evidence(self, qualifying: bytes) -> dict[str, Any]:
        if self.kind == "none":
            return {"type": "none", "statement": UNATTESTED}
        if self.kind == "tsm":
            try:
                found = tsm.tsm_report(Path(self.settings.tsm_path), qualifying)
            except tsm.TsmError as exc:
                raise AttestationError(f"configfs-tsm: {exc}") from exc
            return {
                "type": "tsm",
                "provider": found.provider,
                "generation": found.generation,
                "qualifying_data": qualifying.hex(),
                "outblob": base64.b64encode(found.outblob).decode(),
                "auxblob": base64.b64encode(found.auxblob).decode(),
            }
        assert self.tpm is not None
        try:
            with self._locked_log():
                ak = self.ak = self.ak or self.tpm.ak_public()
                quote = self.tpm.quote(qualifying)
                events = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
        except (tpm.TpmError, OSError, ValueError) as exc:
            raise AttestationError(f"TPM quote: {exc}") from exc
        return {
            "type": "tpm",
            "pcr": self.settings.pcr,
            "hash": "sha256",
            "ak_public": ak.decode(),
            "qualifying_data": qualifying.hex(),
            "quote": base64.b64encode(quote.attest).decode(),
            "signature": base64.b64encode(quote.signature).decode(),
            "event_log": events,
        }


def parse_nonce(query_string: str) -> bytes:
    """The ``nonce=HEX`` parameter (absent = empty); ValueError when it is not hex or too long."""
    values = [part[6:] for part in query_string.split("&") if part.startswith("nonce=")]
    if len(values) > 1:
        raise ValueError("more than one nonce")
    nonce = bytes.fromhex(values[0]) if values else b""
    if len(nonce) > MAX_NONCE:
        raise ValueError(f"nonce longer than {MAX_NONCE} bytes")
    return nonce


def report_text(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"
