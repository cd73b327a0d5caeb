"""The UDP lane's system calls alone: µs per datagram to receive and to answer, recvfrom/sendto against the
``_udpbatch`` extension's recvmmsg/sendmmsg, in-process on loopback, alternating A/B rounds.

    .venv/bin/python bench/udp_lane.py [--datagrams 2000] [--rounds 5]

Each round queues ``--datagrams`` queries in the server socket's receive buffer from a client socket, then times
(CPU of this thread) draining them and sending an answer to each, once per lane. No DNS work: compare with
bench/fastpath.py (the replay itself) and bench/do53.py (the whole server, where the lane is selected with
``ZTDNS_UDP_BATCH``).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import time
from collections.abc import Iterator

from ztdns.transport import _udpbatch
from ztdns.transport.udp import MAX_QUERY

QUERY = bytes(range(40))
ANSWER = bytes(range(56))


def fill(client: socket.socket, server: socket.socket, count: int) -> None:
    for _ in range(count):
        client.sendto(QUERY, server.getsockname())


def pure(server: socket.socket, count: int) -> float:
    receive, send = server.recvfrom, server.sendto
    started = time.thread_time()
    for _ in range(count):
        _, addr = receive(MAX_QUERY)
        send(ANSWER, addr)
    return time.thread_time() - started


def batched(server: socket.socket, count: int) -> float:
    receive, send, fd = _udpbatch.recv, _udpbatch.send, server.fileno()
    buffer = bytearray(_udpbatch.BATCH * MAX_QUERY)
    started = time.thread_time()
    left = count
    while left:
        batch = receive(fd, buffer, MAX_QUERY)
        send(fd, [(ANSWER, name) for _, name in batch])
        left -= len(batch)
    return time.thread_time() - started


def drain(client: socket.socket) -> None:
    client.setblocking(False)
    try:
        while True:
            client.recv(MAX_QUERY)
    except BlockingIOError:
        pass
    client.setblocking(True)


@contextlib.contextmanager
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A server and a client socket on loopback with room for a long queue of datagrams each."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        for sock in (server, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            sock.bind(("127.0.0.1", 0))
        yield server, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with loopback_pair() as (server, client):
        results: dict[str, list[float]] = {"recvfrom/sendto": [], "recvmmsg/sendmmsg": []}
        for _ in range(args.rounds):
            for label, lane in (("recvfrom/sendto", pure), ("recvmmsg/sendmmsg", batched)):
                fill(client, server, args.datagrams)
                results[label].append(lane(server, args.datagrams) / args.datagrams * 1e6)
                drain(client)
    for label, values in results.items():
        print(
            f"{label:18s} receive + answer: best {min(values):.2f} µs, median {statistics.median(values):.2f} µs "
            "per datagram"
        )


if __name__ == "__main__":
    main()
