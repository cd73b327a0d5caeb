"""Current connections from conntrack (netlink, via pyroute2), each labelled with the name and identity that
opened its destination — name-labelled visibility of outbound traffic.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ztdns.agent.allowstate import Grant

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp", 58: "icmpv6"}


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


def label_map(grants: list[Grant]) -> dict[str, Grant]:
    """Address → the grant that expires last (the name that most recently opened it)."""
    labels: dict[str, Grant] = {}
    for grant in grants:
        if grant.address not in labels or labels[grant.address].expires < grant.expires:
            labels[grant.address] = grant
    return labels


def conntrack_flows(labels: dict[str, Grant]) -> list[Flow]:
    from pyroute2 import Conntrack

    flows = []
    for family in (socket.AF_INET, socket.AF_INET6):
        with Conntrack() as conntrack:
            entries = list(conntrack.dump_entries(tuple_orig=_family_filter(family)))
        for entry in entries:
            orig = entry.tuple_orig
            grant = labels.get(str(orig.daddr))
            state = entry.protoinfo.state_name() if entry.protoinfo is not None else entry.status_name()
            flows.append(
                Flow(
                    protocol=_PROTOCOLS.get(orig.proto, str(orig.proto)),
                    source=str(orig.saddr),
                    source_port=orig.sport,
                    destination=str(orig.daddr),
                    port=orig.dport,
                    state=state,
                    name=grant.name if grant else None,
                    identity=(grant.identity or None) if grant else None,
                )
            )
    return flows


def _family_filter(family: int) -> object:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    return NFCTAttrTuple(family=family)


def format_flows(flows: list[Flow]) -> str:
    rows = [("PROTO", "SOURCE", "DESTINATION", "STATE", "NAME", "IDENTITY")]
    for flow in flows:
        source = f"{flow.source}:{flow.source_port}" if flow.source_port is not None else flow.source
        destination = f"{flow.destination}:{flow.port}" if flow.port is not None else flow.destination
        rows.append((flow.protocol, source, destination, flow.state, flow.name or "-", flow.identity or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
