"""Per-workload identity: the processes of a configured cgroup (a systemd unit, a container) are a workload with
an identity of its own (``[[workload]]``).

Config: ``[[workload]] name, cgroup, identity, client_cert, client_key``. The stub finds the asking socket's cgroup
(one ``sock_diag`` request, ≈ 8 µs, on the answer's path only when workloads are configured) and asks the
protective resolver over that workload's own connections, with its client certificate (re-read when the files
change on disk, as SPIFFE helpers rotate them), so the resolver applies the workload's policy. What its answers
open goes into its own sets (``allow4_<name>``, ``allow6_<name>``, the port-scoped ``scoped4_<name>``,
``scoped6_<name>``), reachable only from sockets of its cgroup
(``socket cgroupv2 level N "<path>"``); its sockets never use the host's grants nor another workload's. Sockets of
other cgroups are the host's. Metrics: none of its own. Client data: cgroup IDs and paths, kept in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from ztdns.agent.asker import cgroup2_root
from ztdns.config.agent import WorkloadConfig

# nftables resolves `socket cgroupv2` paths below this folder (it stats the path to learn the cgroup's ID).
_NFT_CGROUP_BASE = Path("/sys/fs/cgroup")


class WorkloadRule(NamedTuple):
    """One present workload's match: its name, its path as nft resolves it, its depth below the v2 root."""

    name: str
    path: str
    level: int


class WorkloadMap:
    """cgroup ID → workload (index into the configured list), for every cgroup inside a workload's cgroup."""

    def __init__(self, workloads: list[WorkloadConfig], root: Path | None = None) -> None:
        self.workloads = workloads
        self.root = root or cgroup2_root()
        self._ids: dict[int, int] = {}
        self.present: tuple[tuple[str, int], ...] = ()  # (name, the workload cgroup's ID) of those that exist

    def refresh(self) -> bool:
        """Walk the workloads' cgroups again; True when the set of present workload cgroups changed (the
        ruleset must then be rebuilt: nftables matches a cgroup by the ID it had when the rule was loaded)."""
        ids: dict[int, int] = {}
        present = []
        if self.root is not None:
            for index, workload in enumerate(self.workloads):
                top = self.root / workload.cgroup
                try:
                    present.append((workload.name, top.stat().st_ino))
                except OSError:
                    continue  # not started yet
                for folder, _, _ in os.walk(top):
                    try:
                        ids[os.stat(folder).st_ino] = index
                    except OSError:
                        continue
        self._ids = ids
        changed = tuple(present) != self.present
        self.present = tuple(present)
        return changed

    def index(self, cgroup: int) -> int | None:
        return self._ids.get(cgroup)

    def rules(self) -> list[WorkloadRule]:
        """Matches for the present workloads (nft needs the path to exist when the rule is loaded)."""
        if self.root is None:
            return []
        names = {name for name, _ in self.present}
        rules = []
        for workload in self.workloads:
            if workload.name in names:
                path = os.path.relpath(self.root / workload.cgroup, _NFT_CGROUP_BASE)
                if not path.startswith(".."):
                    rules.append(WorkloadRule(workload.name, path, len(workload.cgroup.split("/"))))
        return rules
