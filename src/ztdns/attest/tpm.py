"""TPM 2.0 evidence through the tpm2-tools CLI (any TCTI: a device, or swtpm on a socket), and quote checking
in plain Python (a verifier needs no TPM and no tools).

The attestation key (AK) is a restricted ECDSA P-256 signing key, the primary of the endorsement hierarchy
with a fixed template, made persistent at ``ak_handle`` on first use. A quote signs a TPMS_ATTEST structure
holding the caller's qualifying data and the digest of the selected PCRs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
_TPM_GENERATED = 0xFF544347
_ST_ATTEST_QUOTE = 0x8018
_ALG_SHA256 = 0x000B
_ALG_ECDSA = 0x0018


class TpmError(Exception):
    """A TPM command failed (the message carries the tool's own words)."""


class QuoteError(Exception):
    """A quote that does not parse or whose signature does not verify."""


@dataclass(frozen=True)
class Quote:
    attest: bytes  # TPMS_ATTEST, the signed bytes
    signature: bytes  # TPMT_SIGNATURE


class Tpm:
    """One TPM reached through ``tcti``; every call runs one tpm2-tools command (tens of milliseconds)."""

    def __init__(self, tcti: str, ak_handle: int, pcr: int, timeout: float = 10.0) -> None:
        self.tcti = tcti
        self.ak_handle = f"0x{ak_handle:08x}"
        self.pcr = pcr
        self.timeout = timeout

    def _run(self, *args: str) -> bytes:
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        try:
            done = subprocess.run(args, env=env, capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TpmError(f"{args[0]}: {exc}") from None
        if done.returncode != 0:
            words = done.stderr.decode(errors="replace").strip().splitlines()
            raise TpmError(f"{args[0]}: {words[-1] if words else f'exit status {done.returncode}'}")
        return done.stdout

    def ak_public(self) -> bytes:
        """The AK's public key (PEM), creating and persisting it on first use."""
        with tempfile.TemporaryDirectory(prefix="ztdns-tpm-") as work:
            pem = Path(work, "ak.pem")
            try:
                self._run("tpm2_readpublic", "-c", self.ak_handle, "-f", "pem", "-o", str(pem))
            except TpmError:
                context = str(Path(work, "ak.ctx"))
                self._run(
                    "tpm2_createprimary",
                    "-C",
                    "e",
                    "-G",
                    "ecc256:ecdsa-sha256:null",
                    "-a",
                    _AK_ATTRIBUTES,
                    "-c",
                    context,
                )
                self._run("tpm2_evictcontrol", "-C", "o", "-c", context, self.ak_handle)
                self._run("tpm2_readpublic", "-c", self.ak_handle, "-f", "pem", "-o", str(pem))
            return pem.read_bytes()

    def reset(self) -> None:
        self._run("tpm2_pcrreset", str(self.pcr))

    def extend(self, digest: bytes) -> None:
        self._run("tpm2_pcrextend", f"{self.pcr}:sha256={digest.hex()}")

    def quote(self, qualifying_data: bytes) -> Quote:
        with tempfile.TemporaryDirectory(prefix="ztdns-tpm-") as work:
            message, signature = Path(work, "attest.bin"), Path(work, "sig.bin")
            self._run(
                "tpm2_quote",
                "-c",
                self.ak_handle,
                "-l",
                f"sha256:{self.pcr}",
                "-q",
                qualifying_data.hex(),
                "-g",
                "sha256",
                "-m",
                str(message),
                "-s",
                str(signature),
            )
            return Quote(message.read_bytes(), signature.read_bytes())


@dataclass(frozen=True)
class QuoteInfo:
    """The parts of a TPMS_ATTEST quote a verifier checks."""

    signer_name: bytes
    extra_data: bytes  # the qualifying data
    reset_count: int
    restart_count: int
    pcrs: tuple[int, ...]  # selected sha256 PCRs
    pcr_digest: bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise QuoteError("quote is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sized(self) -> bytes:
        return self.take(self.uint(2))


def parse_quote(attest: bytes) -> QuoteInfo:
    reader = _Reader(attest)
    if reader.uint(4) != _TPM_GENERATED or reader.uint(2) != _ST_ATTEST_QUOTE:
        raise QuoteError("not a TPM-generated quote")
    signer = reader.sized()
    extra = reader.sized()
    reader.take(8)  # clock
    reset_count, restart_count = reader.uint(4), reader.uint(4)
    reader.take(1 + 8)  # safe, firmware version
    pcrs: list[int] = []
    for _ in range(reader.uint(4)):
        algorithm, bitmap = reader.uint(2), reader.take(reader.uint(1))
        selected = [byte * 8 + bit for byte, value in enumerate(bitmap) for bit in range(8) if value >> bit & 1]
        if algorithm != _ALG_SHA256 and selected:
            raise QuoteError(f"quote selects PCRs of hash algorithm 0x{algorithm:04x}, not sha256")
        pcrs += selected
    digest = reader.sized()
    if reader.offset != len(attest):
        raise QuoteError("trailing bytes after the quote")
    return QuoteInfo(signer, extra, reset_count, restart_count, tuple(pcrs), digest)


def verify_quote_signature(ak_pem: bytes, quote: Quote) -> None:
    """Raise QuoteError unless ``quote.signature`` is the AK's ECDSA-SHA256 signature of ``quote.attest``."""
    key = serialization.load_pem_public_key(ak_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise QuoteError("the attestation key is not an ECDSA key")
    reader = _Reader(quote.signature)
    if reader.uint(2) != _ALG_ECDSA or reader.uint(2) != _ALG_SHA256:
        raise QuoteError("the quote signature is not ECDSA with SHA-256")
    r, s = int.from_bytes(reader.sized(), "big"), int.from_bytes(reader.sized(), "big")
    try:
        key.verify(encode_dss_signature(r, s), quote.attest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise QuoteError("the quote signature does not verify with the attestation key") from None


def extend(pcr: bytes, digest: bytes) -> bytes:
    """The PCR value after extending ``pcr`` with ``digest`` (sha256 bank)."""
    return hashlib.sha256(pcr + digest).digest()


def pcr_digest(values: list[bytes]) -> bytes:
    """What a quote's pcrDigest holds for these PCR values (in selection order)."""
    return hashlib.sha256(b"".join(values)).digest()
