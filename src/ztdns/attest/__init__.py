"""Attestation: a resolver proves what code and configuration it runs, and clients check it (docs/attestation.md).

Owns: measurements (:mod:`.measure`), evidence — a TPM 2.0 quote (:mod:`.tpm`), a configfs-tsm report
(:mod:`.tsm`) or none — and the report that binds them to a verifier's nonce and the TLS key (:mod:`.report`),
served by DoH listeners at ``/.well-known/ztdns/attestation``; the verifier (:mod:`.verify`), used by
``ztdns attest verify`` and by the agent's ``require_attestation`` (:mod:`.gate`).
Config: ``[attestation]`` (:mod:`ztdns.config.attestation`). Metrics: none. Client data: only the verifier's
nonce, echoed in the report and never stored or logged.
"""
