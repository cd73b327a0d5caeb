"""Egress bypass attempts for the agent tests, run inside a test namespace as root; prints one JSON line.

    agent_bypass.py sniff SECONDS DEVICE      # server side: markers seen on DEVICE within SECONDS
    agent_bypass.py send KIND ...             # client side: one attempt (see ``ATTEMPTS``)

Every attempt carries ``MARKER`` in its payload so that the sniffer can tell whether it got out.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

import dns.message

MARKER = b"ZTDNS-EXFIL"
_ETH_P_ALL, _ETH_P_IP = 0x0003, 0x0800
_SOL_PACKET, _PACKET_QDISC_BYPASS = 263, 20


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmp(kind: int, code: int, body: bytes) -> bytes:
    header = struct.pack("!BBHI", kind, code, 0, 0)
    return struct.pack("!BBHI", kind, code, _checksum(header + body), 0) + body


def udp_from(port: int, family: int, destination: str, to_port: int) -> None:
    """A UDP datagram from a privileged client port (DHCP's) to ``destination``."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.sendto(MARKER + b" udp", (destination, to_port))


def icmp(destination: str, kind: int) -> None:
    """A raw ICMP (or ICMPv6 for an IPv6 destination) message of type ``kind`` carrying the marker."""
    v6 = ":" in destination
    family, protocol = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    with socket.socket(family, socket.SOCK_RAW, protocol) as sock:
        body = MARKER + b" icmp"
        # The kernel computes ICMPv6 checksums (pseudo-header) itself.
        packet = struct.pack("!BBHI", kind, 0, 0, 0) + body if v6 else _icmp(kind, 0, body)
        sock.sendto(packet, (destination, 0))


def packet_dns(device: str, gateway_mac: str, source: str, resolver: str, name: str, bypass: bool) -> bool:
    """A DNS query in a hand-made Ethernet frame through an AF_PACKET socket; True when the answer came back."""
    query = dns.message.make_query(name, "A")
    query.id = 0x5A5A
    payload = query.to_wire() + MARKER
    udp = struct.pack("!HHHH", 40053, 53, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(source), socket.inet_aton(resolver)
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL)) as sock:
        sock.bind((device, 0))
        if bypass:
            sock.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
        own_mac = sock.getsockname()[4]
        frame = bytes.fromhex(gateway_mac.replace(":", "")) + own_mac + struct.pack("!H", _ETH_P_IP) + ip + udp
        sock.send(frame)
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(2048)
            # IPv4 (14), UDP from 53 to our port, a DNS message with our ID.
            if data[12:14] == b"\x08\x00" and data[23] == 17:
                udp_header = data[14 + (data[14] & 0x0F) * 4 :]
                if udp_header[:4] == struct.pack("!HH", 53, 40053) and udp_header[8:10] == b"\x5a\x5a":
                    return True
    return False


def sniff(seconds: float, device: str) -> list[str]:
    """The attempts (text after the marker) seen leaving the client, in arrival order."""
    seen = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL)) as sock:
        sock.bind((device, 0))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(4096)
            at = data.find(MARKER)
            if at >= 0:
                seen.append(data[at + len(MARKER) :].split(b"\0")[0].decode(errors="replace").strip() or "dns")
    return seen


def main() -> None:
    command = sys.argv[1]
    if command == "sniff":
        print(json.dumps(sniff(float(sys.argv[2]), sys.argv[3])), flush=True)
        return
    kind, args = sys.argv[2], sys.argv[3:]
    result: object = None
    try:
        if kind == "udp-from":
            family = socket.AF_INET6 if ":" in args[1] else socket.AF_INET
            udp_from(int(args[0]), family, args[1], int(args[2]))
        elif kind == "icmp":
            icmp(args[0], int(args[1]))
        elif kind == "packet-dns":
            result = packet_dns(args[0], args[1], args[2], args[3], args[4], args[5] == "bypass")
        else:
            raise ValueError(kind)
    except OSError as exc:
        result = f"{type(exc).__name__}: {exc}"  # refused locally: nothing got out
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
