"""Pure functions from configuration and addresses to nftables script text (no I/O; tested as strings).

The table ``inet ztdns`` is always replaced in one transaction (declare, delete, re-create), so there is never
a moment without a policy, and established flows keep flowing (conntrack state is not part of the table).
"""

from __future__ import annotations

import ipaddress

from ztdns.config.agent import AgentConfig, ExceptionConfig

TABLE = "ztdns"
FAMILY = "inet"
SET4 = "allow4"
SET6 = "allow6"
AUDIT_PREFIX = "ztdns-audit "

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How often the kernel sweeps expired elements out of the allow sets. An expired element never matches (lookups
# check the expiry); the sweep only frees its memory, and it walks the whole set: with 200k addresses, a 10–15 ms
# burst of kernel work, every second at the default interval, that answers on the same CPU wait behind. The
# agent deletes the addresses it forgets itself, a few at a time; this sweep only catches what it could not.
_GC_INTERVAL = "5m"

# Outgoing ICMP errors the stack must be able to send (most are also ct related; these cover the rest).
_ICMP4_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
_ICMP6_ERRORS = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
# Neighbour discovery, router solicitation and the MLD reports ND relies on for its multicast groups.
_ICMP6_DISCOVERY = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report"


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


def _common_rules(config: AgentConfig) -> list[str]:
    """What both chains accept: established flows, resolvers, exceptions, the dynamic sets."""
    rules = [
        "ct state established,related accept",
        f"icmp type {{ {_ICMP4_ERRORS} }} accept",
        f"icmpv6 type {{ {_ICMP6_ERRORS} }} accept",
        *_resolver_rules(config),
    ]
    for exception in config.exception:
        rules.extend(_exception_rules(exception))
    rules += [f"ip daddr @{SET4} accept", f"ip6 daddr @{SET6} accept"]
    return rules


def _tail(config: AgentConfig) -> list[str]:
    """Audit mode logs what enforce mode would drop; both count it."""
    if config.mode == "audit":
        return [f'log group {config.firewall.log_group} prefix "{AUDIT_PREFIX}" counter comment "would drop"']
    return ['counter comment "dropped"']


def build_ruleset(config: AgentConfig) -> str:
    """The whole table as one nft script: applying it replaces any previous table atomically."""
    policy = "accept" if config.mode == "audit" else "drop"
    output = ['oifname "lo" accept']
    if config.firewall.dhcp:
        output += [
            'udp sport 68 udp dport 67 accept comment "DHCPv4"',
            'udp sport 546 udp dport 547 accept comment "DHCPv6"',
        ]
    output += [f"icmpv6 type {{ {_ICMP6_DISCOVERY} }} accept", *_common_rules(config), *_tail(config)]
    chains = [("output", "output", output)]
    if config.firewall.forward:
        chains.append(("forward", "forward", [*_common_rules(config), *_tail(config)]))
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        f"  set {SET4} {{ type ipv4_addr; flags timeout; gc-interval {_GC_INTERVAL}; }}",
        f"  set {SET6} {{ type ipv6_addr; flags timeout; gc-interval {_GC_INTERVAL}; }}",
    ]
    for name, hook, rules in chains:
        lines.append(f"  chain {name} {{")
        lines.append(f"    type filter hook {hook} priority filter; policy {policy};")
        lines.extend(f"    {rule}" for rule in rules)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def remove_table_script() -> str:
    """Deletes the table if it exists (declaring it first makes the delete never fail)."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
