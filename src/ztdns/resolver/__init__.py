"""Resolvers: where answers come from once policy has allowed a question and the cache had none.

Owns: the :class:`Resolver` contract, and its implementations — ``forward.py`` (Do53 upstreams with health
tracking, selection logic in ``health.py``; see docs/forwarding.md), ``local.py`` (local zones), ``recursive.py``
(iterative resolution with DNSSEC validation: delegations in ``delegation.py``, responses classified and scrubbed
in ``classify.py``, the injected network exchange in ``upstream.py``, its answer cache in ``answers.py``; root
hints in ``hints.py``, upstream responses parsed by :mod:`ztdns.protocol.parse`) and ``validating.py`` (DNSSEC
validation around any resolver, for forwarding mode). Config: ``[resolver]``
(:class:`~ztdns.config.resolver.ResolverConfig`), ``[dnssec]``. Metrics: each resolver's ``collect()`` (the
:class:`~ztdns.observe.metrics.Exporter` contract): per-upstream health (``Forwarder``); recursion's upstream
queries, forged datagrams dropped, open upstream sockets and aggressive-NSEC answers; validation failures.
Client data touched: none — a resolver sees only the question, never who asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import dns.message
import dns.name

from ztdns.outcome import Reason

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


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
