"""Who asked the stub: the socket, user, cgroup and (while it lives) process behind a query, and who owns a
connection's socket.

A query's asking socket is found with one exact ``sock_diag`` request (≈ 8 µs, made after the query went
upstream, so no answer waits for it): inode, uid and cgroup ID come from the kernel even when the process exits
right after its answer (dig, curl). The process (pid, command) is looked up off the answer path by matching the
inode in ``/proc/*/fd``; short-lived ones may be gone by then, and keep their uid and cgroup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterable
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


def cgroup2_root(mounts: Path = Path("/proc/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or …/unified on hybrid hosts), if it is."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def cgroup_path(cgroup: int, root: Path | None = None) -> str | None:
    """The cgroup v2 path (relative to the hierarchy's root) with this ID, by walking the hierarchy."""
    root = root or cgroup2_root()
    if not cgroup or root is None:
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


class AskedLog:
    """(cgroup ID, address) → (name, when) of recent answers, bounded (the oldest forgotten first)."""

    def __init__(self, limit: int = 65_536) -> None:
        self._limit = limit
        self.entries: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        self.changed = False

    def add(self, cgroup: int, addresses: Iterable[str], name: str, now: float) -> None:
        entries = self.entries
        for address in addresses:
            key = (cgroup, address)
            entries[key] = (name, now)
            entries.move_to_end(key)
        while len(entries) > self._limit:
            entries.popitem(last=False)
        self.changed = True

    def dump(self) -> list[list[object]]:
        """JSON-ready rows [cgroup, address, name, time] (written to the state directory for ``flows``)."""
        return [[cgroup, address, name, when] for (cgroup, address), (name, when) in self.entries.items()]


def load_asked(rows: object) -> dict[tuple[int, str], str]:
    """The rows of :meth:`AskedLog.dump` → (cgroup ID, address) → name; bad rows skipped."""
    asked: dict[tuple[int, str], str] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and len(row) >= 3 and isinstance(row[0], int):
            asked[(row[0], str(row[1]))] = str(row[2])
    return asked


class Attribution:
    """Which workload asked for which name: a socket lookup per query, made while the query is upstream."""

    def __init__(self) -> None:
        self.diag = SocketDiag()
        self.log = AskedLog()
        self._loop: asyncio.AbstractEventLoop | None = None

    def look_up_soon(self, protocol: str, local: tuple[str, int], peer: tuple[str, int]) -> list[Asker | None]:
        """A box that holds the asker once the lookup ran: at the event loop's next turn, after the query has
        been written upstream — no answer waits for it, and the asking socket still exists."""
        box: list[Asker | None] = []
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.call_soon(lambda: box.append(self.diag.asker(protocol, local, peer)))
        return box

    def record(self, box: list[Asker | None], name: str, records: list[tuple[str, int]], now: float) -> None:
        if box and box[0] is not None:
            self.log.add(box[0].cgroup, (address for address, _ in records), name, now)

    def close(self) -> None:
        self.diag.close()
