"""Policy: default deny per identity — the name-pattern grammar, list files, compiled views, decisions.

Owns:
    lists.py     list file formats (plain names, hosts files, AdBlock ``||name^``), skipped-line counting
    compile.py   policies compiled once into O(labels) name tables; ``View.decide`` on the hot path; explain

Config: ``[policies.NAME]`` (allow, deny, allow_lists, deny_lists, blocked_response, include_rule_text) and
each identity's ``policies`` list (:mod:`ztdns.config.policy`); list paths are relative to the config file.
Documented in docs/policy.md. The name-pattern grammar (``example.com``, ``*.example.com``, ``**.example.com``,
``**``) is :mod:`ztdns.patterns`, below the config schema that checks rules with it.

Metrics: none of its own. ``View.policies`` and each ``CompiledPolicy.table`` give sizes for gauges;
decisions are counted by the observe stage from the :class:`Decision` it is handed (``policy`` and ``allowed``
are low cardinality, ``rule`` is not).

Client data: none. Decisions depend on the query name and type only; the caller maps clients to identities.
"""

from ztdns.policy.compile import (
    CompiledPolicy,
    Decision,
    Explanation,
    View,
    compile_views,
    explain,
)

__all__ = ["CompiledPolicy", "Decision", "Explanation", "View", "compile_views", "explain"]
