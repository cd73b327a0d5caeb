"""``[dnssec]``: validation, trust anchors and negative trust anchors; docs/dnssec.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ztdns.config.base import Section


class DnssecConfig(Section):
    """``[dnssec]``: validation in both forwarding and recursive mode; docs/dnssec.md."""

    validation: bool = True
    trust_anchors: list[str] = []  # files of DS/DNSKEY records; empty: the built-in IANA root KSKs
    negative_trust_anchors: list[str] = []  # names below which nothing is validated
    nsec3_max_iterations: Annotated[int, Field(ge=0, le=2500)] = 50  # RFC 9276: above → insecure
