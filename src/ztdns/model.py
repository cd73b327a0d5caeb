"""The shared vocabulary at the bottom of the tree: what is asked, what answered it, and why an answer is what it is.

Owns: :class:`Question`, :class:`Resolution` and the :class:`Resolver` contract (implemented in ``resolver/``,
used by the cache, the stages and ``explain``); :class:`Kind`, :class:`EDE` and :class:`Reason`, carried by every
response (the kind is a low-cardinality label for metrics and logs, the reason is the EDE code and text the
client and the query log see); :func:`copy_rrset`. Imports nothing of ztdns (dnspython only), so any
layer may use it. Config: none. Metrics: none. Client data touched: none.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import dns.message
import dns.name
import dns.rrset

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class Kind(enum.Enum):
    """What produced the answer. Values are the metric/log labels."""

    RESOLVED = "resolved"  # fetched from an upstream (or recursion) just now
    CACHED = "cached"  # served from cache
    STALE = "stale"  # expired cache data served because upstreams failed (RFC 8767)
    LOCAL = "local"  # answered from a local zone
    AUTHORITATIVE = "authoritative"  # answered from a zone this server serves ([authority])
    BLOCKED = "blocked"  # denied by policy (EDE 15)
    PROHIBITED = "prohibited"  # unknown client refused (EDE 18)
    SPECIAL = "special"  # a name with fixed handling (use-application-dns.net)
    FAILED = "failed"  # upstream failure: SERVFAIL (EDE 22/23)
    BOGUS = "bogus"  # DNSSEC validation failed: SERVFAIL with the validator's EDE (never served stale)
    INVALID = "invalid"  # FORMERR / NOTIMP / refused class


class EDE(enum.IntEnum):
    """RFC 8914 Extended DNS Error codes we produce."""

    OTHER = 0
    UNSUPPORTED_DNSKEY_ALGORITHM = 1
    UNSUPPORTED_DS_DIGEST = 2
    STALE_ANSWER = 3
    FORGED_ANSWER = 4
    DNSSEC_INDETERMINATE = 5
    DNSSEC_BOGUS = 6
    SIGNATURE_EXPIRED = 7
    SIGNATURE_NOT_YET_VALID = 8
    DNSKEY_MISSING = 9
    RRSIGS_MISSING = 10
    NO_ZONE_KEY_BIT = 11
    NSEC_MISSING = 12
    CACHED_ERROR = 13
    NOT_READY = 14
    BLOCKED = 15
    CENSORED = 16
    FILTERED = 17
    PROHIBITED = 18
    STALE_NXDOMAIN = 19
    NOT_AUTHORITATIVE = 20
    NOT_SUPPORTED = 21
    NO_REACHABLE_AUTHORITY = 22
    NETWORK_ERROR = 23
    INVALID_DATA = 24


@dataclass(frozen=True, slots=True)
class Reason:
    """An Extended DNS Error to attach, and its EXTRA-TEXT (empty for none)."""

    ede: EDE
    text: str = ""


@dataclass(frozen=True, slots=True)
class Question:
    name: dns.name.Name
    rdtype: int
    rdclass: int
    dnssec_ok: bool = False  # the client set DO: fetch and keep RRSIGs
    checking_disabled: bool = False  # the client set CD


@dataclass(slots=True)
class Resolution:
    """An upstream answer, or why there is none.

    ``response`` carries the upstream rcode and sections (any rcode, SERVFAIL included, is an answer);
    it is None only when no upstream answered, with ``reason`` saying why (EDE 22 or 23).
    """

    response: dns.message.Message | None
    reason: Reason | None = None
    upstream: str | None = None  # "address:port" of the server that answered, for logs
    # DNSSEC status when a validator looked at it: "secure", "insecure", "bogus"; None when not validated.
    # A bogus answer is a SERVFAIL response with ``reason`` carrying the EDE (6-12) and its EXTRA-TEXT.
    security: str | None = None


class Resolver(Protocol):
    async def resolve(self, question: Question) -> Resolution: ...

    async def close(self) -> None: ...

    def collect(self) -> Iterable[Metric]:
        """Its metric families (:class:`ztdns.observe.metrics.Exporter`); the server exports the one in service."""
        ...


def copy_rrset(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    """A copy whose TTL can change without touching the original (dnspython's ``copy`` is untyped)."""
    copy: dns.rrset.RRset = rrset.copy()
    return copy
