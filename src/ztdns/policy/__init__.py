"""Policy: default deny per identity — the name-pattern grammar, list files, compiled views, decisions.

Owns:
    lists.py     list file formats (plain names, hosts files, AdBlock ``||name^``/``@@``/``$important``),
                 skipped-line counting by reason
    rpz.py       RPZ zone files: QNAME triggers and their actions
    sources.py   where a list source's text is: a file, or a feed's last good copy and its status
    schedule.py  weekly time windows of rules and policies
    compile.py   policies compiled once into O(labels) name tables; the precedence of denies, exceptions and
                 allows; ``View.decide`` on the hot path; explain with the chain of rules
    apart.py     reloads: big lists compiled in a child process, which writes the tables into a file the
                 serving process maps (``_nametable.c`` builds and looks them up)
    stage.py     the policy and chain stages; blocked, sinkhole, block-page and rewrite answers

Config: ``[policies.NAME]`` (allow, deny, except, allow_lists, deny_lists, blocked_response, sinkhole,
block_cname, rewrites, schedule, include_rule_text), ``[schedules.NAME]`` and each identity's ``policies`` list
(:mod:`ztdns.config.policy`); list paths are relative to the config file, ``https://`` sources are feeds
(fetched by :mod:`ztdns.feeds`).
Documented in docs/policy.md. The name-pattern grammar (``example.com``, ``*.example.com``, ``**.example.com``,
``**``) is :mod:`ztdns.patterns`, below the config schema that checks rules with it.

Metrics: :data:`CHILD_FAILURES` (reloads whose child failed or timed out; exported by the frontend as
``ztdns_policy_compile_child_failures_total``). ``View.policies`` and each ``CompiledPolicy.table`` (its shards)
give sizes for gauges; decisions are counted by the observe stage from the :class:`Decision` it is handed
(``policy`` and ``allowed`` are low cardinality, ``rule`` is not).

Client data: none. Decisions depend on the query name and type only; the caller maps clients to identities.
"""

from ztdns.policy.apart import CHILD_FAILURES, compile_views_apart
from ztdns.policy.compile import (
    CompiledPolicy,
    Decision,
    Explanation,
    View,
    compile_views,
    explain,
    release_tables,
    replaced_tables,
)

__all__ = [
    "CHILD_FAILURES",
    "CompiledPolicy",
    "Decision",
    "Explanation",
    "View",
    "compile_views",
    "compile_views_apart",
    "explain",
    "release_tables",
    "replaced_tables",
]
