"""Audit mode: would-be drops become JSON-lines records, and ``learn`` turns records into a proposed allow-list.

A record names the destination, port and protocol, the owning process when /proc shows it (socket inode match,
best effort: short-lived processes are gone before we look), and the name that last opened that address, if
any. Records without a name are traffic no DNS answer explains: candidates for ``[[exception]]`` networks.
Repeats of the same destination within ``dedupe_seconds`` are counted, not written again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ztdns.agent.asker import Asker, cgroup_path, process_of_inodes
from ztdns.agent.nflog import LoggedPacket

AUDIT_LOG = "audit.jsonl"


def _hex_port(field_text: str) -> int:
    return int(field_text.rsplit(":", 1)[1], 16)


def socket_inode(protocol: str, source_port: int, port: int, proc: Path = Path("/proc")) -> int | None:
    """The inode of the local socket with this local and remote port (this network namespace's /proc/net)."""
    for table in (protocol, protocol + "6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and _hex_port(fields[1]) == source_port and _hex_port(fields[2]) == port:
                return int(fields[9]) or None
    return None


def process_of(inode: int, proc: Path = Path("/proc")) -> dict[str, object] | None:
    """The first process holding socket ``inode`` open: pid and command name."""
    found = process_of_inodes({inode}, proc).get(inode)
    return {"pid": found[0], "comm": found[1]} if found else None


class BlockedRecorder:
    """Names the protective resolver refused (EDE 15–18), with who asked: one record per name and workload per
    ``dedupe_seconds``, appended to the audit records in any mode (``learn`` proposes from them)."""

    def __init__(self, path: Path, dedupe_seconds: float = 1.0) -> None:
        self.path = path
        self.dedupe_seconds = dedupe_seconds
        self._recent: dict[tuple[str, int], float] = {}

    def due(self, name: str, cgroup: int, now: float) -> bool:
        """Whether this (name, workload) is to be recorded now (not recorded within the dedupe window)."""
        key = (name, cgroup)
        if now - self._recent.get(key, -1e9) < self.dedupe_seconds:
            return False
        if len(self._recent) > 10_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < self.dedupe_seconds}
        self._recent[key] = now
        return True

    def record(self, name: str, asker: Asker | None, code: int, reason: str, now: float) -> dict[str, object]:
        process = process_of(asker.inode) if asker is not None and asker.inode else None
        entry: dict[str, object] = {
            "time": round(now, 3),
            "blocked_name": name,
            "ede": code,
            "reason": reason,
            "uid": asker.uid if asker is not None else None,
            "cgroup": cgroup_path(asker.cgroup) if asker is not None else None,
            "process": process,
        }
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
        return entry


@dataclass
class AuditRecorder:
    path: Path
    last_name: Callable[[str], str | None]
    on_record: Callable[[], None]
    dedupe_seconds: float = 1.0
    _recent: dict[tuple[str, str, int | None], float] = field(default_factory=dict)

    def record(self, packets: Iterable[LoggedPacket], now: float | None = None) -> list[dict[str, object]]:
        now = time.time() if now is None else now
        records = []
        for packet in packets:
            self.on_record()
            key = (packet.destination, packet.protocol, packet.port)
            if now - self._recent.get(key, -1e9) < self.dedupe_seconds:
                continue
            self._recent[key] = now
            records.append(self._describe(packet, now))
        if len(self._recent) > 10_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < self.dedupe_seconds}
        if records:
            with self.path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        return records

    def _describe(self, packet: LoggedPacket, now: float) -> dict[str, object]:
        process = None
        if packet.protocol in ("tcp", "udp") and packet.source_port and packet.port and not packet.forwarded:
            inode = socket_inode(packet.protocol, packet.source_port, packet.port)
            process = process_of(inode) if inode else None
        return {
            "time": round(now, 3),
            "destination": packet.destination,
            "protocol": packet.protocol,
            "port": packet.port,
            "chain": "forward" if packet.forwarded else "output",
            "uid": packet.uid,
            "process": process,
            "name": self.last_name(packet.destination),
        }


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """'90m', '2h', '1d' (ago) or an ISO 8601 time → epoch seconds."""
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration like 2h or an ISO 8601 time") from None


@dataclass
class Proposal:
    names: dict[str, int]  # name → records
    networks: dict[str, dict[str, set[int]]]  # network → protocol → ports


def learn(records: Iterable[dict[str, object]], since: float) -> Proposal:
    """Names that explain traffic become allow entries; unexplained destinations become exception networks."""
    names: dict[str, int] = defaultdict(int)
    networks: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        stamp = record.get("time")
        if not isinstance(stamp, int | float) or stamp < since:
            continue
        name = record.get("name")
        if isinstance(name, str) and name:
            names[name] += 1
            continue
        try:
            address = ipaddress.ip_address(str(record.get("destination")))
        except ValueError:
            continue
        protocol = str(record.get("protocol"))
        ports = networks[str(ipaddress.ip_network(address))][protocol]
        port = record.get("port")
        if isinstance(port, int):
            ports.add(port)
    return Proposal(dict(names), {net: dict(protos) for net, protos in networks.items()})


def read_records(path: Path) -> Iterable[dict[str, object]]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item


def _toml_list(values: Iterable[object]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def proposal_toml(proposal: Proposal) -> str:
    """The proposal as TOML: an allow list for the resolver policy and ``[[exception]]`` tables for the agent."""
    lines = ["# Proposed by `ztdns agent learn`; review before use.", ""]
    lines.append("# For the protective resolver's policy for this host's identity (ztdns.toml):")
    lines.append("[policies.learned]")
    lines.append("allow = [")
    lines += [f"    {json.dumps(name)},  # {count} records" for name, count in sorted(proposal.names.items())]
    lines.append("]")
    lines.append("")
    lines.append("# For the agent configuration: destinations no DNS answer explained.")
    for index, (network, protocols) in enumerate(sorted(proposal.networks.items()), start=1):
        ports = sorted({p for ps in protocols.values() for p in ps})
        known = sorted(p for p in protocols if p in ("tcp", "udp"))
        lines.append("[[exception]]")
        lines.append(f'name = "learned-{index}"')
        lines.append(f"networks = {_toml_list([network])}")
        if ports:
            lines.append(f"ports = {_toml_list(ports)}")
        if known and not (set(protocols) - {"tcp", "udp"}):
            lines.append(f"protocols = {_toml_list(known)}")
        else:
            lines.append(f"# also seen: {', '.join(sorted(set(protocols) - {'tcp', 'udp'}))}")
        lines.append("")
    return "\n".join(lines)
