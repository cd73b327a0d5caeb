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


# Ports of DNS itself (plain and over TLS or QUIC), and addresses and names of well-known public DNS-over-HTTPS
# services: traffic to them is an application resolving around the protective resolver — flagged, never proposed.
_DNS_PORTS = {53, 853}
_DOH_ADDRESSES = {
    "1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4", "9.9.9.9", "149.112.112.112", "208.67.222.222", "208.67.220.220",
    "94.140.14.14", "94.140.15.15", "45.90.28.0", "45.90.30.0", "185.228.168.168",
    "2606:4700:4700::1111", "2606:4700:4700::1001", "2001:4860:4860::8888", "2001:4860:4860::8844",
    "2620:fe::fe", "2620:fe::9", "2620:119:35::35", "2a10:50c0::ad1:ff",
}  # fmt: skip
_DOH_NAMES = {
    "dns.google", "dns.google.com", "cloudflare-dns.com", "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com",
    "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com", "dns.quad9.net", "doh.opendns.com", "dns.adguard.com",
    "dns.adguard-dns.com", "dns.nextdns.io", "doh.cleanbrowsing.org", "doh.dns.sb", "dns.sb",
}  # fmt: skip


def is_dns_endpoint(name: str) -> bool:
    """A well-known DNS-over-HTTPS/TLS service name (or one that says it is: ``doh.…``, ``dns.…``)."""
    name = name.lower().rstrip(".")
    return name in _DOH_NAMES or name.startswith(("doh.", "dns-over-https.", "dot."))


def _who(record: dict[str, object]) -> str | None:
    """The process (command), else the cgroup, else the uid behind a record."""
    process = record.get("process")
    if isinstance(process, dict) and process.get("comm"):
        return str(process["comm"])
    if record.get("cgroup"):
        return f"cgroup {record['cgroup']}"
    uid = record.get("uid")
    return f"uid {uid}" if isinstance(uid, int) else None


@dataclass
class Seen:
    """How often, and by whom."""

    count: int = 0
    who: set[str] = field(default_factory=set)

    def add(self, record: dict[str, object]) -> None:
        self.count += 1
        who = _who(record)
        if who:
            self.who.add(who)


@dataclass
class Proposal:
    # Registered domain → refused name → how often/by whom: the allow-list proposal.
    domains: dict[str, dict[str, Seen]]
    # Refused names that are DNS resolvers: flagged, not proposed.
    resolver_names: dict[str, Seen]
    # Allowed names whose traffic outlived their grant: not proposed (raise grace / ttl_floor instead).
    outlived: dict[str, Seen]
    # Unexplained destinations: network → protocol → ports (proposed as exceptions) ...
    networks: dict[str, dict[str, set[int]]]
    # ... except DNS endpoints (plain/TLS DNS ports, well-known DoH addresses): flagged, not proposed.
    resolvers: dict[str, dict[str, set[int]]]


def learn(records: Iterable[dict[str, object]], since: float) -> Proposal:
    """Refused names become allow proposals, grouped by registered domain; unexplained destinations become
    exception networks; DNS resolvers are flagged in both, never proposed."""
    from publicsuffixlist import PublicSuffixList

    suffixes = PublicSuffixList()
    domains: dict[str, dict[str, Seen]] = defaultdict(lambda: defaultdict(Seen))
    resolver_names: dict[str, Seen] = defaultdict(Seen)
    outlived: dict[str, Seen] = defaultdict(Seen)
    networks: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    resolvers: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        stamp = record.get("time")
        if not isinstance(stamp, int | float) or stamp < since:
            continue
        blocked = record.get("blocked_name")
        if isinstance(blocked, str) and blocked:
            if is_dns_endpoint(blocked):
                resolver_names[blocked].add(record)
            else:
                domains[suffixes.privatesuffix(blocked) or blocked][blocked].add(record)
            continue
        name = record.get("name")
        if isinstance(name, str) and name:
            outlived[name].add(record)
            continue
        try:
            address = ipaddress.ip_address(str(record.get("destination")))
        except ValueError:
            continue
        port = record.get("port")
        dns_like = port in _DNS_PORTS or (port == 443 and str(address) in _DOH_ADDRESSES)
        ports = (resolvers if dns_like else networks)[str(ipaddress.ip_network(address))][str(record.get("protocol"))]
        if isinstance(port, int):
            ports.add(port)
    return Proposal(
        {domain: dict(names) for domain, names in domains.items()},
        dict(resolver_names),
        dict(outlived),
        {net: dict(protos) for net, protos in networks.items()},
        {net: dict(protos) for net, protos in resolvers.items()},
    )


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


def _seen(seen: Seen) -> str:
    who = f"; {', '.join(sorted(seen.who))}" if seen.who else ""
    return f"{seen.count} records{who}"


def _ports(protocols: dict[str, set[int]]) -> str:
    return ", ".join(f"{protocol}/{port}" for protocol, ports in sorted(protocols.items()) for port in sorted(ports))


def proposal_toml(proposal: Proposal) -> str:
    """The proposal as TOML: an allow list for the resolver policy and ``[[exception]]`` tables for the agent,
    with what must not be proposed (DNS resolvers, names already allowed) as comments."""
    lines = ["# Proposed by `ztdns agent learn`; review before use.", ""]
    lines.append("# Names the protective resolver refused, by registered domain (records; who asked).")
    lines.append("# For the protective resolver's policy for this host's identity (ztdns.toml):")
    lines.append("[policies.learned]")
    lines.append("allow = [")
    for domain, names in sorted(proposal.domains.items()):
        total = Seen(sum(s.count for s in names.values()), set().union(*(s.who for s in names.values())))
        wildcard = f' — or "**.{domain}"' if len(names) > 2 else ""
        lines.append(f"    # {domain}: {_seen(total)}{wildcard}")
        lines += [f"    {json.dumps(name)},  # {_seen(seen)}" for name, seen in sorted(names.items())]
    lines.append("]")
    if proposal.resolver_names:
        lines.append("# NOT proposed — refused names that are DNS resolvers (allowing them lets applications resolve")
        lines.append("# around the protective resolver):")
        lines += [f"#   {name}  ({_seen(seen)})" for name, seen in sorted(proposal.resolver_names.items())]
    if proposal.outlived:
        lines.append("# Already allowed; their traffic outlived the grant (raise allow.grace or allow.ttl_floor):")
        lines += [f"#   {name}  ({_seen(seen)})" for name, seen in sorted(proposal.outlived.items())]
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
    if proposal.resolvers:
        lines.append("# NOT proposed — DNS resolvers this host tried to reach directly (DNS, DoT, well-known DoH):")
        lines += [f"#   {network}  {_ports(protocols)}" for network, protocols in sorted(proposal.resolvers.items())]
        lines.append("")
    return "\n".join(lines)
