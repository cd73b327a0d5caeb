"""Endpoint enforcement agent: default-deny egress opened only by protective DNS answers (nftables).

Owns: the nftables tables ``inet ztdns`` and ``netdev ztdns`` (ruleset.py, built through one libnftables handle
in nft.py; its set elements written and its definition watched over raw netlink in nfnetlink.py; the devices whose
egress is hooked against packet sockets: links.py), the stub resolver the host uses (stub.py) and its DoT/DoH
failover to the protective resolvers (upstream.py, on the clients of ztdns.resolver.encrypted), who asked it
(asker.py: sock_diag), per-workload identities by cgroup (workloads.py), the grant scope asked for and taken out
of answers (answers.py, EDNS option :mod:`ztdns.wire.grant_scope`), which addresses — or address, protocol and
port for scoped grants — are open for which names (allowstate.py, written by setwriter.py before each answer is
released), their persistence (persist.py), one
agent per state directory (lock.py), the host's resolv.conf (hostdns.py), audit records from NFLOG, refused names
and the ``learn`` proposal (nflog.py, audit.py), conntrack flows labelled by (who asked, name) (flows.py), the
fleet's agent bundles applied live (control.py, with ``[control]``), and ``ztdns agent`` (cli.py).

Config: a separate agent file (:mod:`ztdns.config.agent`, documented in docs/agent.md).
Metrics (metrics.py): ztdns_agent_answers, _addresses_added/_refreshed/_expired/_evicted/_shed,
_set_update_failures, _upstream_failures, _audit_drops, _refused_clients, _table_restored, _live_addresses,
_plumbing_seconds; with ``[control]`` also ztdns_control_* (the control plane's watcher).
Client data it touches: the names this host resolves and the addresses they open, which cgroup asked for which
(asked.json), kept in the state directory (grants journal/snapshot, audit records with process names, uids and
cgroups); nothing leaves the host except the DNS queries to the configured protective resolvers (and, with
``[control]``, the bundle revision it runs and its identity, to the control plane).
"""
