"""Read packets from an nftables ``log group`` over NFLOG netlink (NETLINK_NETFILTER, subsystem ULOG).

Parsing is sans-IO (:func:`parse_messages` takes bytes); :class:`NflogSocket` is the thin socket adapter. Only
what audit records need is decoded: the first bytes of the packet, the prefix, the owning uid, the devices.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_UID = 11
_NLA_TYPE_MASK = 0x3FFF
_COPY_RANGE = 64  # IP header + ports are all we read


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    destination: str
    protocol: str  # "tcp", "udp", "icmp", "icmpv6" or the protocol number
    source_port: int | None
    port: int | None
    prefix: str
    uid: int | None
    forwarded: bool  # came in on an interface: a container or VM routed through this host


def _attributes(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs[kind & _NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def parse_packet(payload: bytes) -> tuple[str, str, int | None, int | None] | None:
    """(destination, protocol, source port, destination port) from an IPv4/IPv6 packet's first bytes."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        header = (payload[0] & 0x0F) * 4
        number = payload[9]
        destination = str(ipaddress.IPv4Address(payload[16:20]))
    elif version == 6 and len(payload) >= 40:
        header = 40
        number = payload[6]
        destination = str(ipaddress.IPv6Address(payload[24:40]))
    else:
        return None
    protocol = _PROTOCOLS.get(number, str(number))
    if protocol in ("tcp", "udp") and len(payload) >= header + 4:
        source_port, port = struct.unpack_from("!HH", payload, header)
        return destination, protocol, source_port, port
    return destination, protocol, None, None


def parse_messages(data: bytes) -> list[LoggedPacket]:
    """Every logged packet in one netlink read."""
    packets = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        body = data[offset + 16 : offset + length]
        offset += (length + 3) & ~3
        if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET or len(body) < 4:
            continue
        attrs = _attributes(body[4:])
        parsed = parse_packet(attrs.get(NFULA_PAYLOAD, b""))
        if parsed is None:
            continue
        uid = attrs.get(NFULA_UID)
        packets.append(
            LoggedPacket(
                destination=parsed[0],
                protocol=parsed[1],
                source_port=parsed[2],
                port=parsed[3],
                prefix=attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode(errors="replace"),
                uid=struct.unpack("!I", uid)[0] if uid and len(uid) == 4 else None,
                forwarded=NFULA_IFINDEX_INDEV in attrs,
            )
        )
    return packets


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def config_message(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _check_ack(data: bytes) -> None:
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind == NLMSG_ERROR and length >= 20:
        error = struct.unpack_from("=i", data, 16)[0]
        if error != 0:
            raise OSError(-error, f"NFLOG config refused: {os.strerror(-error)}")


class NflogSocket:
    """A non-blocking netlink socket bound to one NFLOG group."""

    def __init__(self, group: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            bind = _attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND))
            mode = _attr(NFULA_CFG_MODE, struct.pack("!IBB", _COPY_RANGE, NFULNL_COPY_PACKET, 0))
            for seq, attrs in enumerate((bind, mode), start=1):
                self.sock.send(config_message(group, attrs, seq))
                _check_ack(self.sock.recv(65536))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def read(self) -> list[LoggedPacket]:
        packets: list[LoggedPacket] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return packets
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped records under load; keep reading
                    continue
                raise
            packets += parse_messages(data)

    def close(self) -> None:
        self.sock.close()
