"""Pure functions from configuration and addresses to nftables script text (no I/O; tested as strings).

The table ``inet ztdns`` is always replaced in one transaction (declare, delete, re-create), so there is never
a moment without a policy, and established flows keep flowing (conntrack state is not part of the table).

Packet sockets (``AF_PACKET``) hand frames to the device without passing the inet hooks. The same transaction
therefore (re)builds ``table netdev ztdns``: an ``egress`` hook on the host's devices that lets through only
frames the IP stack marked on their way out (a per-start random value in ``firewall.packet_mark_mask``, set in
the last ``postrouting`` step and cleared again at egress), non-IP frames (ARP, LLDP), and the scoped DHCP and
neighbour discovery rules that DHCP clients send raw. Conntrack cannot be consulted at a netdev hook, hence the
mark.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Sequence

from ztdns.config.agent import AgentConfig, ExceptionConfig

TABLE = "ztdns"
FAMILY = "inet"
SET4 = "allow4"
SET6 = "allow6"
# Port-scoped grants (an allow rule with ``ports``): address . protocol . port, beside the address-only sets.
SCOPED4 = "scoped4"
SCOPED6 = "scoped6"
AUDIT_PREFIX = "ztdns-audit "
EGRESS_CHAIN = "egress"  # in table netdev ztdns
MARK_CHAIN = "stamp"  # in table inet ztdns ("mark" is an nft keyword)


def set_names(workload: str) -> tuple[str, str, str, str]:
    """A workload's IPv4 and IPv6 sets, address-only and port-scoped."""
    return f"{SET4}_{workload}", f"{SET6}_{workload}", f"{SCOPED4}_{workload}", f"{SCOPED6}_{workload}"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How often the kernel sweeps expired elements out of the allow sets. An expired element never matches (lookups
# check the expiry); the sweep only frees its memory, and it walks the whole set: with 200k addresses, a 10–15 ms
# burst of kernel work, every second at the default interval, that answers on the same CPU wait behind. The
# agent deletes the addresses it forgets itself, a few at a time; this sweep only catches what it could not.
_GC_INTERVAL = "5m"

# Neighbour discovery, router solicitation and the MLD reports ND relies on for its multicast groups: only to
# link-local and link-scope multicast addresses (and the configured link networks), never routed anywhere.
# ICMP/ICMPv6 errors pass only as `ct state related` (an error about a flow conntrack knows, sent to its peer).
_ICMP6_DISCOVERY = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report"
_LINK_SCOPE6 = ("fe80::/10", "ff02::/16")
_DHCP4_SERVERS = ("255.255.255.255",)  # DHCPDISCOVER/REQUEST/REBIND; unicast renewals need link_networks
_DHCP6_SERVERS = ("ff02::1:2",)  # All_DHCP_Relay_Agents_and_Servers (RFC 8415)
# Ethernet types a netdev egress hook lets through unmarked: anything but IP (and VLAN tags that could carry IP).
_IP_ETHERTYPES = "ip, ip6, vlan, 8021ad"
# The step that marks the stack's packets runs after every other postrouting chain (so they see their marks as
# set), just before conntrack confirms the flow.
_MARK_PRIORITY = 2147483646


def _family_of(network: str) -> str:
    return "ip" if ipaddress.ip_network(network, strict=False).version == 4 else "ip6"


def _exception_rules(exception: ExceptionConfig) -> list[str]:
    rules = []
    for family in ("ip", "ip6"):
        nets = [n for n in exception.networks if _family_of(n) == family]
        if not nets:
            continue
        match = f"{family} daddr {{ {', '.join(nets)} }}"
        comment = f'comment "exception {exception.name}"'
        if not exception.ports:
            if set(exception.protocols) == {"tcp", "udp"}:
                rules.append(f"{match} accept {comment}")
            else:
                protos = ", ".join(exception.protocols)
                rules.append(f"{match} meta l4proto {{ {protos} }} accept {comment}")
            continue
        ports = ", ".join(str(p) for p in exception.ports)
        rules.extend(f"{match} {proto} dport {{ {ports} }} accept {comment}" for proto in exception.protocols)
    return rules


def _resolver_rules(config: AgentConfig) -> list[str]:
    rules = []
    for server in config.server:
        host, port = server.hostport()
        family = "ip" if ipaddress.ip_address(host).version == 4 else "ip6"
        rules.append(f'{family} daddr {host} tcp dport {port} accept comment "protective resolver"')
    return rules


def _control_rules(config: AgentConfig) -> list[str]:
    """The control plane's NATS servers named by address (``[control] servers``): the agent's way to its bundles,
    which no bundle can take away. Servers named by host name are reached as any name is, through the stub."""
    rules = []
    for url in config.control.servers if config.control is not None else []:
        parsed = urllib.parse.urlsplit(url)
        try:
            address = ipaddress.ip_address(parsed.hostname or "")
        except ValueError:
            continue
        family = "ip" if address.version == 4 else "ip6"
        rules.append(f'{family} daddr {address} tcp dport {parsed.port or 4222} accept comment "control plane"')
    return rules


def _link_rules(config: AgentConfig) -> list[str]:
    """DHCP client traffic to its broadcast/multicast (and configured link) addresses, neighbour discovery to
    link-scope addresses: nothing that a router forwards to a foreign address."""
    link4 = [n for n in config.firewall.link_networks if _family_of(n) == "ip"]
    link6 = [n for n in config.firewall.link_networks if _family_of(n) == "ip6"]
    rules = []
    if config.firewall.dhcp:
        rules += [
            f'udp sport 68 udp dport 67 ip daddr {{ {", ".join([*_DHCP4_SERVERS, *link4])} }} accept comment "DHCPv4"',
            f"udp sport 546 udp dport 547 ip6 daddr {{ {', '.join([*_DHCP6_SERVERS, *link6])} }} accept"
            ' comment "DHCPv6"',
        ]
    scope = ", ".join([*_LINK_SCOPE6, *link6])
    rules.append(f'icmpv6 type {{ {_ICMP6_DISCOVERY} }} ip6 daddr {{ {scope} }} accept comment "neighbour discovery"')
    return rules


def _common_rules(config: AgentConfig) -> list[str]:
    """What both chains accept: established flows (and ICMP errors about them), resolvers, exceptions, the sets."""
    rules = ["ct state established,related accept", *_resolver_rules(config), *_control_rules(config)]
    for exception in config.exception:
        rules.extend(_exception_rules(exception))
    rules += [*_set_rules(SET4, SET6, SCOPED4, SCOPED6)]
    return rules


def _set_rules(set4: str, set6: str, scoped4: str, scoped6: str, match: str = "") -> list[str]:
    """Accept what a set opens: an address-only grant any port, a scoped one its protocol and port only."""
    return [
        f"{match}ip daddr @{set4} accept",
        f"{match}ip6 daddr @{set6} accept",
        f"{match}ip daddr . meta l4proto . th dport @{scoped4} accept",
        f"{match}ip6 daddr . meta l4proto . th dport @{scoped6} accept",
    ]


def _set_definitions(set4: str, set6: str, scoped4: str, scoped6: str) -> list[str]:
    options = f"flags timeout; gc-interval {_GC_INTERVAL};"
    return [
        f"  set {set4} {{ type ipv4_addr; {options} }}",
        f"  set {set6} {{ type ipv6_addr; {options} }}",
        f"  set {scoped4} {{ type ipv4_addr . inet_proto . inet_service; {options} }}",
        f"  set {scoped6} {{ type ipv6_addr . inet_proto . inet_service; {options} }}",
    ]


def _tail(config: AgentConfig) -> list[str]:
    """Audit mode logs what enforce mode would drop; both count it."""
    if config.mode == "audit":
        return [f'log group {config.firewall.log_group} prefix "{AUDIT_PREFIX}" counter comment "would drop"']
    return ['counter comment "dropped"']


def _egress_table(config: AgentConfig, devices: Sequence[str], mark: int) -> list[str]:
    """``table netdev ztdns``: frames leaving ``devices`` without the stack's mark are dropped (packet sockets)."""
    lines = [f"table netdev {TABLE}", f"delete table netdev {TABLE}"]
    if not devices:
        return lines
    mask = config.firewall.packet_mark_mask
    quoted = ", ".join(f'"{device}"' for device in devices)
    tail = (
        'counter comment "would drop (packet socket)"'
        if config.mode == "audit"
        else 'counter drop comment "packet socket"'
    )
    lines += [
        f"table netdev {TABLE} {{",
        f"  chain {EGRESS_CHAIN} {{",
        f"    type filter hook egress devices = {{ {quoted} }} priority filter; policy accept;",
        f"    meta mark and {mask:#010x} == {mark:#010x} meta mark set meta mark and {~mask & 0xFFFFFFFF:#010x} accept",
        f"    meta protocol != {{ {_IP_ETHERTYPES} }} accept",
        *(f"    {rule}" for rule in _link_rules(config)),
        f"    {tail}",
        "  }",
        "}",
    ]
    return lines


def _workload_rules(config: AgentConfig, workloads: Sequence[tuple[str, str, int]]) -> list[str]:
    """Each workload's sockets reach its own sets, and nothing the host's (or another workload's) answers opened."""
    rules = []
    for name, path, level in workloads:
        match = f'socket cgroupv2 level {level} "{path}"'
        rules += _set_rules(*set_names(name), match=f"{match} ")
        if config.mode == "audit":
            group = config.firewall.log_group
            rules.append(f'{match} log group {group} prefix "{AUDIT_PREFIX}" accept comment "workload {name}"')
        else:
            rules.append(f'{match} counter drop comment "workload {name}"')
    return rules


def build_ruleset(
    config: AgentConfig,
    devices: Sequence[str] = (),
    mark: int = 0,
    workloads: Sequence[tuple[str, str, int]] = (),
) -> str:
    """The whole ruleset as one nft script: applying it replaces any previous tables atomically.

    ``devices``: the host devices whose egress is hooked against packet sockets (none: no netdev table);
    ``mark``: the value, within ``firewall.packet_mark_mask``, the stack's own packets carry to that hook;
    ``workloads``: (name, cgroup path as nft resolves it, level) of the workloads whose cgroup exists.
    """
    policy = "accept" if config.mode == "audit" else "drop"
    common = _common_rules(config)
    host_sets = common.index(f"ip daddr @{SET4} accept")  # workload rules go just before the host's sets
    common[host_sets:host_sets] = _workload_rules(config, workloads)
    output = ['oifname "lo" accept', *_link_rules(config), *common, *_tail(config)]
    chains = [("output", "output", output)]
    if config.firewall.forward:
        chains.append(("forward", "forward", [*_common_rules(config), *_tail(config)]))
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        *_set_definitions(SET4, SET6, SCOPED4, SCOPED6),
    ]
    for workload in config.workload:  # every configured one: its grants outlive its cgroup's restarts
        lines += _set_definitions(*set_names(workload.name))
    for name, hook, rules in chains:
        lines.append(f"  chain {name} {{")
        lines.append(f"    type filter hook {hook} priority filter; policy {policy};")
        lines.extend(f"    {rule}" for rule in rules)
        lines.append("  }")
    if devices:
        mask = config.firewall.packet_mark_mask
        keep = ~mask & 0xFFFFFFFF
        lines += [
            f"  chain {MARK_CHAIN} {{",
            f"    type filter hook postrouting priority {_MARK_PRIORITY}; policy accept;",
            f"    meta mark set meta mark and {keep:#010x} or {mark & mask:#010x}",
            "  }",
        ]
    lines.append("}")
    lines += _egress_table(config, devices, mark & config.firewall.packet_mark_mask)
    return "\n".join(lines) + "\n"


def remove_table_script() -> str:
    """Deletes the tables if they exist (declaring them first makes the delete never fail)."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\ntable netdev {TABLE}\ndelete table netdev {TABLE}\n"
