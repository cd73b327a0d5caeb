"""Checking a report: fetch it with a fresh nonce over TLS, note the certificate the server presented, and check
everything the report claims against that and the verifier's reference values. Each check has a name and
says exactly what failed; the first failure decides.

Checks, in order: ``nonce`` (the report answers our nonce: not a stale one), ``spki`` (it is bound to the key
the server presented), ``report`` (its digest covers what it says), then the evidence — for a TPM quote
``signature`` (the attestation key signed it), ``quote-binding`` (the quote carries H(nonce ‖ SPKI ‖ report
digest): not a quote replayed from another report), ``pcr-replay`` (the event log replays to the quoted PCR),
``measurement`` (the log's latest event is the report's digests) — and last the reference values
``code-digest`` and ``config-digest``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztdns.attest import tpm
from ztdns.attest.measure import spki_of
from ztdns.attest.report import FORMAT, PATH, event_digest, qualifying_data, report_digest

MAX_REPORT = 4 * 1024 * 1024


class FetchError(Exception):
    """The report could not be fetched (connection, TLS, HTTP status, not JSON)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class References:
    """What the verifier accepts; empty sets accept any value (the check then says so)."""

    code_digests: frozenset[str] = frozenset()
    config_digests: frozenset[str] = frozenset()
    ak_pem: bytes | None = None
    allow_unattested: bool = False


@dataclass(frozen=True)
class Fetched:
    report: dict[str, Any]
    spki: bytes  # SHA-256 of the SPKI of the certificate the server presented
    nonce: bytes


def report_url(url: str) -> str:
    """A bare ``https://host:port`` gets the well-known path."""
    parts = urlsplit(url)
    return url if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}{PATH}"


def fetch(
    url: str, context: ssl.SSLContext, nonce: bytes | None = None, timeout: float = 10.0, server_name: str | None = None
) -> Fetched:
    """GET the report with a fresh random nonce (HTTP/1.1), keeping the certificate the server presented.
    ``server_name`` is sent as SNI and checked against the certificate when ``context`` checks hostnames."""
    nonce = os.urandom(32) if nonce is None else nonce
    parts = urlsplit(report_url(url))
    if parts.scheme != "https" or not parts.hostname:
        raise FetchError(f"{url}: not an https URL")
    context.set_alpn_protocols(["http/1.1"])
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    request = (
        f"GET {parts.path}?nonce={nonce.hex()} HTTP/1.1\r\nHost: {authority}\r\naccept: application/json\r\n"
        "connection: close\r\n\r\n"
    )
    try:
        with (
            socket.create_connection((host, parts.port or 443), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            tls.sendall(request.encode("ascii"))
            response = http.client.HTTPResponse(tls)
            response.begin()
            body = response.read(MAX_REPORT + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{url}: {exc}") from None
    if response.status != 200:
        raise FetchError(f"{url}: HTTP {response.status}: {body[:200].decode(errors='replace').strip()}")
    if der is None:
        raise FetchError(f"{url}: the server presented no certificate")
    if len(body) > MAX_REPORT:
        raise FetchError(f"{url}: report larger than {MAX_REPORT} bytes")
    try:
        report = json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{url}: not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise FetchError(f"{url}: the report is not a JSON object")
    return Fetched(report, spki_of(x509.load_der_x509_certificate(der)), nonce)


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS for fetching: the chain and name are checked against ``ca`` when given; without one the SPKI binding
    is what ties the report to the server (the check ``spki``)."""
    context = ssl.create_default_context(cafile=ca) if ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not ca:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _same_key(a: bytes, b: bytes) -> bool:
    def der(pem: bytes) -> bytes:
        return serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return der(a) == der(b)


def _fail(checks: list[Check], name: str, detail: str) -> list[Check]:
    return [*checks, Check(name, False, detail)]


def verify_report(report: dict[str, Any], nonce: bytes, presented_spki: bytes, references: References) -> list[Check]:
    """The checks done, in order, up to and including the first that failed."""
    checks: list[Check] = []
    if report.get("format") != FORMAT:
        return _fail(checks, "format", f"not a {FORMAT} report (format {report.get('format')!r})")
    if report.get("nonce") != nonce.hex():
        return _fail(checks, "nonce", f"stale nonce: the report answers nonce {report.get('nonce')!r}, not ours")
    checks.append(Check("nonce", True, "the report answers our nonce"))
    if report.get("tls_spki") != presented_spki.hex():
        detail = f"wrong SPKI: the report is bound to {report.get('tls_spki')!r}; the server presented a key whose"
        return _fail(checks, "spki", f"{detail} SPKI SHA-256 is {presented_spki.hex()}")
    checks.append(Check("spki", True, f"bound to the presented key {presented_spki.hex()}"))
    digest = report_digest(report)
    if report.get("report_digest") != digest.hex():
        return _fail(checks, "report", "the report digest does not match its content (altered in transit?)")
    checks.append(Check("report", True, f"report digest {digest.hex()}"))
    evidence = report.get("evidence")
    if not isinstance(evidence, dict):
        return _fail(checks, "evidence", "the report carries no evidence")
    expected = qualifying_data(nonce, presented_spki, digest)
    kind = evidence.get("type")
    try:
        if kind == "tpm":
            checks += _tpm_checks(report, evidence, expected, references)
        elif kind == "tsm":
            checks += _tsm_checks(evidence, expected, references)
        elif kind == "none":
            if not references.allow_unattested:
                return _fail(checks, "evidence", "unattested: the report has evidence 'none' (software only)")
            checks.append(Check("evidence", True, "evidence 'none' accepted: nothing is attested"))
        else:
            return _fail(checks, "evidence", f"unknown evidence type {kind!r}")
    except _Failed as failed:
        return [*checks, *failed.checks]
    for name, key, accepted in (
        ("code-digest", "code_digest", references.code_digests),
        ("config-digest", "config_digest", references.config_digests),
    ):
        value = report.get(key)
        if accepted and value not in accepted:
            return _fail(checks, name, f"{name.replace('-', ' ')} mismatch: the server runs {value}, not a reference")
        checks.append(Check(name, True, f"{value}" if accepted else f"{value} (no reference value given)"))
    return checks


class _Failed(Exception):
    def __init__(self, checks: list[Check]) -> None:
        super().__init__(checks[-1].detail)
        self.checks = checks


def _tpm_checks(
    report: dict[str, Any], evidence: dict[str, Any], expected: bytes, references: References
) -> list[Check]:
    checks: list[Check] = []

    def fail(name: str, detail: str) -> _Failed:
        return _Failed([*checks, Check(name, False, detail)])

    try:
        ak = str(evidence["ak_public"]).encode()
        quote = tpm.Quote(base64.b64decode(evidence["quote"]), base64.b64decode(evidence["signature"]))
        info = tpm.parse_quote(quote.attest)
    except (KeyError, ValueError, TypeError, tpm.QuoteError) as exc:
        raise fail("signature", f"malformed TPM evidence: {exc}") from None
    if references.ak_pem is not None:
        try:
            pinned = _same_key(ak, references.ak_pem)
        except ValueError as exc:
            raise fail("signature", f"attestation key unreadable: {exc}") from None
        if not pinned:
            raise fail("signature", "the report's attestation key is not the pinned one (--ak)")
    try:
        tpm.verify_quote_signature(ak, quote)
    except (tpm.QuoteError, ValueError) as exc:
        raise fail("signature", str(exc)) from None
    pinned_note = "pinned" if references.ak_pem is not None else "NOT pinned: pass --ak to trust only your TPM's key"
    checks.append(Check("signature", True, f"quote signed by the attestation key ({pinned_note})"))
    if info.extra_data != expected:
        raise fail("quote-binding", "replayed quote: its qualifying data is not H(nonce ‖ SPKI ‖ report digest)")
    checks.append(Check("quote-binding", True, "the quote carries H(nonce ‖ SPKI ‖ report digest)"))
    pcr = evidence.get("pcr")
    events = evidence.get("event_log")
    if info.pcrs != (pcr,) or not isinstance(events, list) or not events:
        raise fail("pcr-replay", f"the quote selects PCRs {list(info.pcrs)}, the report says PCR {pcr}")
    value = bytes(32)
    try:
        for event in events:
            digest = event_digest(event)
            if event.get("digest") != digest.hex():
                raise fail("pcr-replay", f"event {event.get('event')!r} does not hash to its digest")
            value = tpm.extend(value, digest)
    except (KeyError, AttributeError, TypeError) as exc:
        raise fail("pcr-replay", f"malformed event log: {exc}") from None
    if tpm.pcr_digest([value]) != info.pcr_digest:
        raise fail("pcr-replay", f"the event log ({len(events)} events) does not replay to the quoted PCR {pcr}")
    checks.append(Check("pcr-replay", True, f"{len(events)} events replay to PCR {pcr}"))
    last = events[-1]
    for key in ("code_digest", "config_digest", "policy_revision"):
        if last.get(key) != report.get(key):
            raise fail(
                "measurement", f"the latest measured {key} is {last.get(key)}, the report says {report.get(key)}"
            )
    checks.append(Check("measurement", True, f"the report's digests are the latest measured ({last.get('event')})"))
    return checks


def _tsm_checks(evidence: dict[str, Any], expected: bytes, references: References) -> list[Check]:
    try:
        outblob = base64.b64decode(evidence["outblob"])
    except (KeyError, ValueError, TypeError) as exc:
        raise _Failed([Check("quote-binding", False, f"malformed configfs-tsm evidence: {exc}")]) from None
    if expected not in outblob:
        detail = "replayed report: the hardware report does not carry H(nonce ‖ SPKI ‖ report digest)"
        raise _Failed([Check("quote-binding", False, detail)])
    checks = [Check("quote-binding", True, f"the {evidence.get('provider')} report carries our qualifying data")]
    if not references.allow_unattested:
        detail = (
            f"the {evidence.get('provider')} report's vendor signature is not checked by ztdns: check the outblob "
            "with the vendor's tools, or accept it unverified"
        )
        raise _Failed([*checks, Check("signature", False, detail)])
    checks.append(Check("signature", True, "vendor signature NOT checked (accepted unverified)"))
    return checks


def summary(checks: list[Check]) -> tuple[bool, str]:
    """Whether everything passed, and one line saying so or naming the failed check."""
    failed = next((check for check in checks if not check.ok), None)
    if failed is None:
        return True, "verified: " + ", ".join(check.name for check in checks)
    return False, f"FAILED {failed.name}: {failed.detail}"
