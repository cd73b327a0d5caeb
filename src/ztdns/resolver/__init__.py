"""Resolvers: where answers come from once policy has allowed a question and the cache had none.

Owns: the implementations of the :class:`~ztdns.model.Resolver` contract — ``forward.py`` (Do53 upstreams with health
tracking, selection logic in ``health.py``; see docs/forwarding.md), ``local.py`` (local zones), ``recursive.py``
(iterative resolution with DNSSEC validation; root hints in ``hints.py``, upstream responses parsed by
:mod:`ztdns.wire.parse`) and ``validating.py`` (DNSSEC validation around any resolver, for forwarding mode).
Config: ``[resolver]`` (:class:`~ztdns.config.model.ResolverConfig`), ``[dnssec]``. Metrics: per-upstream health
from ``Forwarder.health()``; recursion's upstream queries, forged datagrams dropped and aggressive-NSEC answers.
Client data touched: none — a resolver sees only the question, never who asked.
"""

from __future__ import annotations
