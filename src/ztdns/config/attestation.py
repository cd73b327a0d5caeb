"""Attestation config: the server's ``[attestation]`` section and the agent's ``require_attestation`` table.

Lives in the config package (not in ``ztdns.attest``) so that importing it first cannot start an import cycle:
the package's ``__init__`` (which imports this through ``model``) always runs before this module.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ztdns.config.base import Section

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _digests(values: list[str]) -> list[str]:
    cleaned = []
    for value in values:
        digest = value.lower().removeprefix("sha256:")
        if not _DIGEST.match(digest):
            raise ValueError(f"{value!r} is not a SHA-256 digest (64 hex digits, optionally after 'sha256:')")
        cleaned.append(digest)
    return cleaned


class AttestationConfig(Section):
    """``[attestation]``: what the server measures and which evidence it offers (docs/attestation.md)."""

    # Serve the report on every DoH listener at /.well-known/ztdns/attestation.
    serve: bool = True
    # "auto": configfs-tsm where the kernel has it, else the TPM when tpm_tcti is set, else none.
    evidence: Literal["auto", "tpm", "tsm", "none"] = "auto"
    # tpm2-tools TCTI, e.g. "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321" ("" = no TPM).
    tpm_tcti: str = ""
    # The PCR extended at start and reload. 16 (debug) and 23 (application) are resettable at locality 0, so a
    # start can begin a fresh event log; the others are left to firmware and the OS.
    pcr: Annotated[int, Field(ge=16, le=23)] = 16
    # Persistent handle of the attestation key (a restricted ECDSA P-256 primary key in the endorsement
    # hierarchy, created on first use).
    ak_handle: Annotated[int, Field(ge=0x81000000, le=0x81FFFFFF)] = 0x81010020
    # The operator's name for the reviewed policy (a git commit, a ticket); "" = derived from the config digest.
    policy_revision: str = ""
    # configfs-tsm report directory (the kernel's; tests point it at a fake tree).
    tsm_path: str = "/sys/kernel/config/tsm/report"

    @model_validator(mode="after")
    def _tcti(self) -> AttestationConfig:
        if self.evidence == "tpm" and not self.tpm_tcti:
            raise ValueError("evidence = 'tpm' needs tpm_tcti (how to reach the TPM)")
        return self

    @field_validator("pcr")
    @classmethod
    def _resettable(cls, value: int) -> int:
        if value not in (16, 23):
            raise ValueError("use PCR 16 or 23: the PCRs between are not resettable by ztdns")
        return value

    # Report requests answered at once; more get HTTP 503 (a quote takes the TPM tens of milliseconds).
    max_concurrent: Annotated[int, Field(ge=1, le=64)] = 4


class RequireAttestation(Section):
    """An agent ``[[server]]``'s ``require_attestation``: the reference values its evidence must match."""

    # Accepted code and config digests (hex SHA-256, as `ztdns attest show` prints them); empty = any.
    code_digest: list[str] = []
    config_digest: list[str] = []
    # PEM file of the TPM attestation key's public key ("" = a TPM quote is not required; the report must
    # still carry evidence other than "none" unless allow_unattested is set).
    ak: str = ""
    allow_unattested: bool = False
    # The report's URL ("" = https://ADDRESS/.well-known/ztdns/attestation for a DoH server; DoT servers need it).
    url: str = ""
    # Re-checked this often, and whenever the connection to the server is made anew.
    interval: Annotated[float, Field(gt=0, le=86_400)] = 300.0

    @field_validator("code_digest", "config_digest")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        return _digests(values)
