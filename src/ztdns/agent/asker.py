"""Who asked the stub: the socket, user, cgroup and (while it lives) process behind a query, and who owns a
connection's socket.

A query's asking socket is found with one exact ``sock_diag`` request (≈ 8 µs, made after the query went
upstream, so no answer waits for it): inode, uid and cgroup ID come from the kernel even when the process exits
right after its answer (dig, curl). The process (pid, command) is looked up off the answer path by matching the
inode in ``/proc/*/fd``; short-lived ones may be gone by then, and keep their uid and cgroup.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY = 4, 20
_INET_DIAG_CGROUP_ID = 21
_NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")
_MESSAGE = 4 + 48 + 20  # inet_diag_msg: family/state/timer/retrans, sockid, expires/queues/uid/inode
_NO_COOKIE = struct.pack("=II", 0xFFFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Asker:
    inode: int
    uid: int
    cgroup: int  # cgroup v2 ID (the cgroup directory's inode number); 0 when the kernel does not say


def _sockid(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    def packed(address: str) -> bytes:
        return ipaddress.ip_address(address).packed.ljust(16, b"\0")

    ports = struct.pack("!HH", source_port, destination_port)
    return ports + packed(source) + packed(destination) + struct.pack("=I", 0) + _NO_COOKIE


class SocketDiag:
    """One NETLINK_SOCK_DIAG socket for exact lookups."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200_000))
        self._sock.bind((0, 0))
        self._sequence = 0

    def asker(self, protocol: str, local: tuple[str, int], peer: tuple[str, int]) -> Asker | None:
        """The peer's socket of a stub exchange: ``local`` is the stub's address, ``peer`` the client's."""
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        if protocol == "udp":  # a receive lookup: the socket that would get a datagram from the stub
            sockid = _sockid(local[0], local[1], peer[0], peer[1])
            number = socket.IPPROTO_UDP
        else:  # TCP: the client's own connection (its local end first)
            sockid = _sockid(peer[0], peer[1], local[0], local[1])
            number = socket.IPPROTO_TCP
        request = struct.pack("=BBBBI", family, number, 0, 0, 0xFFFFFFFF) + sockid
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        try:
            self._sock.send(
                _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, 1, self._sequence, 0) + request
            )
            while True:
                data = self._sock.recv(8192)
                if len(data) >= _HEADER.size and _HEADER.unpack_from(data)[3] == self._sequence:
                    break
        except OSError:
            return None
        return parse_diag(data)

    def close(self) -> None:
        self._sock.close()


def parse_diag(data: bytes) -> Asker | None:
    """An inet_diag reply (one netlink message) → inode, uid and cgroup ID; None for an error reply."""
    if len(data) < _HEADER.size + _MESSAGE or _HEADER.unpack_from(data)[1] == _NLMSG_ERROR:
        return None
    body = data[_HEADER.size : _HEADER.unpack_from(data)[0]]
    uid, inode = struct.unpack_from("=II", body, 4 + 48 + 12)
    cgroup = 0
    offset = _MESSAGE
    while offset + 4 <= len(body):
        size, kind = struct.unpack_from("=HH", body, offset)
        if size < 4:
            break
        if kind & 0x3FFF == _INET_DIAG_CGROUP_ID and size >= 12:
            cgroup = struct.unpack_from("=Q", body, offset + 4)[0]
        offset += (size + 3) & ~3
    return Asker(inode, uid, cgroup)


def process_of_inodes(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """inode → (pid, command) for the sockets still open, one walk of ``/proc/*/fd``."""
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, tuple[int, str]] = {}
    if not targets:
        return found
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"{entry.path}/fd"):
                inode = targets.get(os.readlink(fd.path))
                if inode is not None and inode not in found:
                    comm = Path(entry.path, "comm").read_text().strip()
                    found[inode] = (int(entry.name), comm)
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if len(found) == len(targets):
            break
    return found


def cgroup_path(cgroup: int, root: Path = Path("/sys/fs/cgroup")) -> str | None:
    """The cgroup v2 path (relative to the hierarchy's root) with this ID, by walking the hierarchy."""
    if not cgroup:
        return None
    for folder, children, _ in os.walk(root):
        for child in children:
            path = os.path.join(folder, child)
            try:
                if os.stat(path).st_ino == cgroup:
                    return "/" + os.path.relpath(path, root)
            except OSError:
                continue
    return "/" if cgroup == 1 else None


def socket_owners(proc: Path = Path("/proc")) -> dict[tuple[int | None, int | None, str], str]:
    """(local port, remote port, remote address) → "pid" key of each TCP/UDP socket's owning process."""
    by_inode: dict[int, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_hex, remote_port = fields[2].rsplit(":", 1)
            by_inode[int(fields[9])] = (local_port, int(remote_port, 16), _proc_address(remote_hex))
    owners = process_of_inodes(set(by_inode) - {0}, proc)
    return {by_inode[inode]: str(pid) for inode, (pid, _) in owners.items()}


def _proc_address(text: str) -> str:
    """An address as /proc/net writes it (32-bit words in host byte order)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if os.sys.byteorder == "little" else raw  # type: ignore[attr-defined]
    return str(ipaddress.ip_address(words))


class AskedLog:
    """(asker key, address) → (name, process label) of recent answers, bounded (the oldest forgotten first)."""

    def __init__(self, limit: int = 65_536) -> None:
        self._limit = limit
        self.entries: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def add(self, key: str, addresses: list[str], name: str, label: str) -> None:
        entries = self.entries
        for address in addresses:
            entries[(key, address)] = (name, label)
            entries.move_to_end((key, address))
        while len(entries) > self._limit:
            entries.popitem(last=False)
