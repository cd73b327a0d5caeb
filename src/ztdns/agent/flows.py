"""Current connections from conntrack (one ctnetlink dump, IPv4 and IPv6), each labelled with the name and
identity that opened its destination — by (who asked, address): an address shared by several names is labelled
with the name *this flow's* workload (its socket's cgroup) resolved, not whichever grant lives longest.

Also the agent's view of which destinations have live flows, so that the per-name cap never closes an address
a connection still uses (:class:`LiveDestinations`, refreshed off the answer path).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ztdns.agent.allowstate import Grant, bare_address
from ztdns.agent.asker import SocketDiag, cgroup_path
from ztdns.agent.nfnetlink import NETLINK_NETFILTER, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, attrs, message, messages

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp", 58: "icmpv6"}
_NFNL_SUBSYS_CTNETLINK, _IPCTNL_MSG_CT_GET = 1, 1
_CTA_TUPLE_ORIG, _CTA_STATUS, _CTA_PROTOINFO = 1, 3, 4
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_CTA_PROTOINFO_TCP, _CTA_PROTOINFO_TCP_STATE = 1, 1
_TCP_STATES: tuple[str, ...] = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
)
_TCP_STATES += ("CLOSE", "SYN_SENT2")
_IPS_ASSURED, _IPS_SEEN_REPLY = 1 << 2, 1 << 1


@dataclass(frozen=True, slots=True)
class Connection:
    """One conntrack entry's original direction."""

    protocol: int
    source: str
    source_port: int | None
    destination: str
    port: int | None
    state: str


@dataclass(frozen=True, slots=True)
class Flow:
    protocol: str
    source: str
    source_port: int | None
    destination: str
    port: int | None
    state: str
    name: str | None
    identity: str | None
    workload: str | None = None  # the cgroup that asked the stub for ``name`` (when the stub saw it ask)


def _address(value: bytes) -> str:
    return str(ipaddress.ip_address(value))


def parse_connection(payload: bytes) -> Connection | None:
    """A ctnetlink NEW message's payload (nfgenmsg and attributes) → its original tuple and state."""
    fields = dict(attrs(payload[4:]))
    orig = fields.get(_CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tuple_fields = dict(attrs(orig))
    ip = dict(attrs(tuple_fields.get(_CTA_TUPLE_IP, b"")))
    proto = dict(attrs(tuple_fields.get(_CTA_TUPLE_PROTO, b"")))
    source = ip.get(_CTA_IP_V4_SRC) or ip.get(_CTA_IP_V6_SRC)
    destination = ip.get(_CTA_IP_V4_DST) or ip.get(_CTA_IP_V6_DST)
    if source is None or destination is None or _CTA_PROTO_NUM not in proto:
        return None
    sport, dport = proto.get(_CTA_PROTO_SRC_PORT), proto.get(_CTA_PROTO_DST_PORT)
    state = ""
    tcp = dict(attrs(dict(attrs(fields.get(_CTA_PROTOINFO, b""))).get(_CTA_PROTOINFO_TCP, b"")))
    if _CTA_PROTOINFO_TCP_STATE in tcp:
        index = tcp[_CTA_PROTOINFO_TCP_STATE][0]
        state = _TCP_STATES[index] if index < len(_TCP_STATES) else str(index)
    elif _CTA_STATUS in fields:
        status = struct.unpack(">I", fields[_CTA_STATUS][:4])[0]
        state = "ASSURED" if status & _IPS_ASSURED else "SEEN_REPLY" if status & _IPS_SEEN_REPLY else "UNREPLIED"
    return Connection(
        protocol=proto[_CTA_PROTO_NUM][0],
        source=_address(source),
        source_port=struct.unpack(">H", sport)[0] if sport else None,
        destination=_address(destination),
        port=struct.unpack(">H", dport)[0] if dport else None,
        state=state,
    )


def connections() -> Iterator[Connection]:
    """Every conntrack entry of this network namespace, IPv4 and IPv6 (one dump; needs CAP_NET_ADMIN)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
        sock.send(message(kind, NLM_F_DUMP, 1, socket.AF_UNSPEC, b""))
        while True:
            data = sock.recv(1 << 20)
            for message_kind, _, _, _, payload in messages(data):
                if message_kind == NLMSG_DONE:
                    return
                if message_kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise OSError(error, f"conntrack dump: {socket.errno.errorcode.get(error, error)}")  # type: ignore[attr-defined]
                    return
                connection = parse_connection(payload)
                if connection is not None:
                    yield connection


class LiveDestinations:
    """Destinations with conntrack entries as of the last dump: the per-name cap keeps these ("zombies").

    Asking marks the view as wanted; the agent refreshes it (one dump, in a worker thread) only then, so a
    host whose names stay under their caps never dumps conntrack.
    """

    def __init__(self) -> None:
        self.addresses: frozenset[str] = frozenset()
        self.wanted = False

    def __call__(self, address: str) -> bool:
        self.wanted = True
        return address in self.addresses

    def refresh(self) -> None:
        self.addresses = frozenset(connection.destination for connection in connections())


def label_map(grants: list[Grant]) -> dict[str, Grant]:
    """Address → the grant that expires last (the name that most recently opened it); a port-scoped grant counts
    for its address."""
    labels: dict[str, Grant] = {}
    for grant in grants:
        address = bare_address(grant.address)
        if address not in labels or labels[address].expires < grant.expires:
            labels[address] = grant
    return labels


def label_flows(
    found: Iterable[Connection],
    labels: dict[str, Grant],
    asked: dict[tuple[int, str], str] | None = None,
    cgroup_of: Callable[[Connection], int | None] | None = None,
) -> list[Flow]:
    """Label each connection with the name its own workload resolved for the destination — ``asked``: (cgroup ID,
    address) → name, as the stub saw it; ``cgroup_of``: the cgroup of the connection's socket — and otherwise
    with the address's longest-lived grant (the name that most recently opened it)."""
    flows = []
    for connection in found:
        grant = labels.get(connection.destination)
        name = grant.name if grant else None
        identity = (grant.identity or None) if grant else None
        workload: str | None = None
        if asked and cgroup_of is not None:
            cgroup = cgroup_of(connection)
            if cgroup is not None and (cgroup, connection.destination) in asked:
                name = asked[(cgroup, connection.destination)]
                workload = cgroup_path(cgroup) or f"cgroup {cgroup}"
        flows.append(
            Flow(
                protocol=_PROTOCOLS.get(connection.protocol, str(connection.protocol)),
                source=connection.source,
                source_port=connection.source_port,
                destination=connection.destination,
                port=connection.port,
                state=connection.state,
                name=name,
                identity=identity,
                workload=workload,
            )
        )
    return flows


def socket_cgroup(diag: SocketDiag) -> Callable[[Connection], int | None]:
    """The cgroup of a local connection's socket (one exact sock_diag lookup), None when it is not ours."""

    def lookup(connection: Connection) -> int | None:
        protocol = _PROTOCOLS.get(connection.protocol)
        if protocol not in ("tcp", "udp") or connection.source_port is None or connection.port is None:
            return None
        # The asker lookup's terms: "local" is the far end the socket talks to, "peer" the socket itself.
        found = diag.asker(
            protocol, (connection.destination, connection.port), (connection.source, connection.source_port)
        )
        return found.cgroup if found is not None else None

    return lookup


def format_flows(flows: list[Flow]) -> str:
    rows = [("PROTO", "SOURCE", "DESTINATION", "STATE", "NAME", "IDENTITY", "WORKLOAD")]
    for flow in flows:
        source = f"{flow.source}:{flow.source_port}" if flow.source_port is not None else flow.source
        destination = f"{flow.destination}:{flow.port}" if flow.port is not None else flow.destination
        rows.append(
            (
                flow.protocol,
                source,
                destination,
                flow.state,
                flow.name or "-",
                flow.identity or "-",
                flow.workload or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
