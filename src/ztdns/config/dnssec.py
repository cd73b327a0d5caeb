"""``[dnssec]``: validation, trust anchors and negative trust anchors; docs/dnssec.md."""

from __future__ import annotations

from typing import Annotated

import dns.dnssectypes
from pydantic import Field, field_validator

from ztdns.config.base import Section


class DnssecConfig(Section):
    """``[dnssec]``: validation in both forwarding and recursive mode; docs/dnssec.md."""

    validation: bool = True
    trust_anchors: list[str] = []  # files of DS/DNSKEY records; empty: the built-in IANA root KSKs
    negative_trust_anchors: list[str] = []  # names below which nothing is validated
    nsec3_max_iterations: Annotated[int, Field(ge=0, le=2500)] = 50  # RFC 9276: above → insecure
    # Algorithms validated (mnemonics); zones signed only with others are insecure (EDE 1). RSASHA1 and
    # RSASHA1NSEC3SHA1 may be added (RFC 9905 deprecated SHA-1 in DNSSEC; see docs/dnssec.md).
    algorithms: list[str] = ["RSASHA256", "RSASHA512", "ECDSAP256SHA256", "ECDSAP384SHA384", "ED25519", "ED448"]

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        known = {"RSASHA1", "RSASHA1NSEC3SHA1", *cls.model_fields["algorithms"].default}
        unknown = [name for name in value if name.upper() not in known]
        if unknown:
            raise ValueError(f"unknown or unsupported algorithms {unknown}; known: {sorted(known)}")
        return [name.upper() for name in value]

    def algorithm_numbers(self) -> frozenset[int]:
        return frozenset(int(dns.dnssectypes.Algorithm[name]) for name in self.algorithms)
