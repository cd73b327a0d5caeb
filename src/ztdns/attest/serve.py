"""The report on DoH listeners: ``GET /.well-known/ztdns/attestation?nonce=HEX`` answers JSON (docs/attestation.md).

Evidence is made in a thread (a TPM quote takes tens of milliseconds); at most ``max_concurrent`` at once,
more get 503, so report requests cannot queue up behind the TPM without bound.
"""

from __future__ import annotations

import asyncio
import logging

from ztdns.attest.measure import spki_sha256
from ztdns.attest.report import AttestationError, Attestor, parse_nonce, report_text
from ztdns.transport.doh import HttpResponse, http_error

log = logging.getLogger("ztdns.attest")


class ReportRoute:
    """The DoH route answering report requests for one process's :class:`Attestor`."""

    def __init__(self, attestor: Attestor) -> None:
        self.attestor = attestor
        self.active = 0

    async def __call__(self, query_string: str, cert_pem: bytes) -> HttpResponse:
        try:
            nonce = parse_nonce(query_string)
        except ValueError as exc:
            return http_error(400, f"nonce: {exc}")
        if self.active >= self.attestor.settings.max_concurrent:
            return http_error(503, "busy: too many attestation requests", ("retry-after", "1"))
        self.active += 1
        try:
            spki = spki_sha256(cert_pem)
            report = await asyncio.get_running_loop().run_in_executor(None, self.attestor.report, nonce, spki)
        except AttestationError as exc:
            log.error("attestation report failed: %s", exc)
            return http_error(503, "attestation unavailable")
        finally:
            self.active -= 1
        body = report_text(report).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
        ]
        return HttpResponse(200, headers, body)
