"""Why an answer is what it is, as data: every response carries a kind and a reason.

The kind is a low-cardinality label for metrics and logs; the reason (EDE code and text) is what the client
and the query log see.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
