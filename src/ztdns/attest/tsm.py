"""configfs-tsm reports (Linux 6.7+): the confidential VM's hardware report (Intel TDX, AMD SEV-SNP, ...).

The kernel interface: make a directory under ``/sys/kernel/config/tsm/report``, write up to 64 bytes of
report data to its ``inblob``, read the signed report from ``outblob`` and the vendor from ``provider``; the
``generation`` counter tells whether someone else wrote ``inblob`` in between. The report is signed by the
CPU vendor's keys (VCEK/VLEK for SEV-SNP, the quoting enclave for TDX): ztdns binds its qualifying data into it
and leaves checking the vendor chain to the vendor's tools (docs/attestation.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

REPORT_DATA_SIZE = 64


class TsmError(Exception):
    """The configfs-tsm interface is missing or refused the request."""


@dataclass(frozen=True)
class TsmReport:
    provider: str
    generation: int
    outblob: bytes
    auxblob: bytes


def available(root: Path) -> bool:
    return root.is_dir()


def tsm_report(root: Path, report_data: bytes, wait: float = 5.0) -> TsmReport:
    """One report carrying ``report_data`` (zero-padded to 64 bytes)."""
    if len(report_data) > REPORT_DATA_SIZE:
        raise TsmError("report data is longer than 64 bytes")
    entry = root / f"ztdns-{os.getpid()}-{time.monotonic_ns()}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise TsmError(f"{entry}: {exc.strerror or exc}") from None
    try:
        (entry / "inblob").write_bytes(report_data.ljust(REPORT_DATA_SIZE, b"\0"))
        generation_file = entry / "generation"
        deadline = time.monotonic() + wait
        # The kernel makes outblob on read; a slow provider (or the test's fake) may take a moment to fill it.
        while not (entry / "outblob").is_file() or not (entry / "outblob").stat().st_size:
            if time.monotonic() > deadline:
                raise TsmError(f"{entry}: no outblob")
            time.sleep(0.01)
        outblob = (entry / "outblob").read_bytes()
        provider = (entry / "provider").read_text().strip() if (entry / "provider").is_file() else "unknown"
        generation = int(generation_file.read_text().strip() or 0) if generation_file.is_file() else 0
        auxblob = (entry / "auxblob").read_bytes() if (entry / "auxblob").is_file() else b""
    except OSError as exc:
        raise TsmError(f"{entry}: {exc.strerror or exc}") from None
    finally:
        _remove(entry)
    if generation > 1:
        raise TsmError(f"{entry}: written by someone else meanwhile (generation {generation})")
    return TsmReport(provider, generation, outblob, auxblob)


def _remove(entry: Path) -> None:
    """configfs removes the attributes with the directory; a plain directory (the tests' fake) needs emptying."""
    for child in entry.iterdir() if entry.is_dir() else ():
        try:
            child.unlink()
        except OSError:
            break
    with contextlib.suppress(OSError):
        entry.rmdir()
