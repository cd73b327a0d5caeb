"""Resolvers: where answers come from once policy has allowed a question and the cache had none.

Owns: the implementations of the :class:`~ztdns.model.Resolver` contract — ``forward.py`` (Do53 upstreams with health
tracking, selection logic in ``health.py``; see docs/forwarding.md), ``local.py`` (local zones), ``recursive.py``
(iterative resolution with DNSSEC validation: delegations in ``delegation.py``, responses classified and scrubbed
in ``classify.py``, the injected network exchange in ``upstream.py``, its answer cache in ``answers.py``; root
hints in ``hints.py``, upstream responses parsed by :mod:`ztdns.wire.parse`) and ``validating.py`` (DNSSEC
validation around any resolver, for forwarding mode). Config: ``[resolver]``
(:class:`~ztdns.config.resolver.ResolverConfig`), ``[dnssec]``. Metrics: each resolver's ``collect()`` (the
:class:`~ztdns.observe.metrics.Exporter` contract): per-upstream health (``Forwarder``); recursion's upstream
queries, forged datagrams dropped, open upstream sockets and aggressive-NSEC answers; validation failures.
Client data touched: none — a resolver sees only the question, never who asked.
"""

from __future__ import annotations
