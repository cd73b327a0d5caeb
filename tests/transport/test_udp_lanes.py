"""The UDP lane's two implementations: batched (``_udpbatch``: recvmmsg/sendmmsg) and pure Python (recvfrom/sendto).

The extension alone (datagrams, addresses, truncation, a refused send in a batch), then the differential test: the
same query stream through a real ``Frontend`` behind each lane gives the same answers, one query at a time and
in bursts that the batched lane reads many at a time.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from ztdns.config import parse_config
from ztdns.config.listen import ListenConfig
from ztdns.handler import Frontend
from ztdns.observe.ring import items, take
from ztdns.observe.sinks import Feed, QueueSink
from ztdns.transport import udp
from ztdns.transport.udp import UdpListener, sockaddr_address

batch_module = pytest.importorskip("ztdns.transport._udpbatch", reason="the _udpbatch extension is not built")

CONFIG = """
[resolver]
mode = "none"

[identities.bench]
networks = ["127.0.0.0/8", "::1/128"]
policies = ["bench"]

[policies.bench]
allow = ["**.bench.test"]
deny = ["ads.bench.test"]

[[local_zones]]
name = "bench.test"
records = ["bench.test. 3600 IN SOA ns.bench.test. h.bench.test. 1 3600 600 86400 300",
           "www.bench.test. 300 IN A 192.0.2.1",
           "mail.bench.test. 300 IN AAAA 2001:db8::1"]

[log.query_log]
output = "off"
"""


def _socket(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2)
    return sock


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_recv_gives_the_datagrams_and_the_addresses_recvfrom_gives(family: socket.AddressFamily, host: str) -> None:
    with _socket(family, host) as server, _socket(family, host) as client, _socket(family, host) as reference:
        for i in range(10):
            client.sendto(b"q%d" % i, server.getsockname())
        client.sendto(b"ref", reference.getsockname())
        _, expected = reference.recvfrom(100)
        buffer = bytearray(64 * 100)
        received: list[tuple[bytes, bytes]] = []
        while len(received) < 10:
            received += batch_module.recv(server.fileno(), buffer, 100)
        assert [data for data, _ in received] == [b"q%d" % i for i in range(10)]
        assert {sockaddr_address(name) for _, name in received} == {expected}
        # An answer goes back to the address as read.
        assert batch_module.send(server.fileno(), [(b"a1", received[0][1]), (b"a2", received[1][1])]) == 2
        assert client.recv(100) == b"a1"
        assert client.recv(100) == b"a2"


def test_recv_gives_each_datagram_its_own_sender_and_shares_a_repeated_senders_address() -> None:
    """More interleaved senders than recv remembers per batch: every datagram still gets its own sender's address;
    the datagrams of a sender seen lately share one address object (the lane's dictionaries find it by identity)."""
    with _socket(socket.AF_INET, "127.0.0.1") as server:
        clients = [_socket(socket.AF_INET, "127.0.0.1") for _ in range(6)]
        try:
            order = [0, 0, 1, 0, 2, 3, 4, 5, 0, 5, 5, 1, 2, 2, 3, 4, 0, 1, 2, 3, 4, 5, 5, 5]
            for index, sender in enumerate(order):
                clients[sender].sendto(b"%d" % index, server.getsockname())
            # Loopback mostly delivers within sendto, so one recv takes all 24; a loaded kernel may defer some.
            calls: list[list[tuple[bytes, bytes]]] = []
            while sum(map(len, calls)) < len(order):
                calls.append(batch_module.recv(server.fileno(), bytearray(64 * 100), 100))
            received = [item for call in calls for item in call]
            assert [data for data, _ in received] == [b"%d" % i for i in range(len(order))]
            assert [sockaddr_address(name) for _, name in received] == [clients[s].getsockname() for s in order]
            shared = 0
            for call in calls:
                recent: list[bytes] = []  # the last 4 distinct senders' objects, newest first, as recv keeps them
                for _, name in call:
                    seen = [known for known in recent if known == name]
                    if seen:
                        assert name is seen[0]
                        shared += 1
                    else:
                        recent = [name, *recent][:4]
            assert len(calls) > 1 or shared == 7  # the 2nd, 4th, 10th, 11th, 14th and the last two
        finally:
            for client in clients:
                client.close()


def test_recv_cuts_long_datagrams_and_keeps_empty_ones() -> None:
    with _socket(socket.AF_INET, "127.0.0.1") as server, _socket(socket.AF_INET, "127.0.0.1") as client:
        client.sendto(b"x" * 300, server.getsockname())
        client.sendto(b"", server.getsockname())
        buffer = bytearray(2 * 100)
        received = batch_module.recv(server.fileno(), buffer, 100)
        if len(received) == 1:
            received += batch_module.recv(server.fileno(), buffer, 100)
        assert [data for data, _ in received] == [b"x" * 100, b""]
        with pytest.raises(ValueError):
            batch_module.recv(server.fileno(), bytearray(10), 100)


def test_a_refused_datagram_does_not_stop_the_rest_of_the_batch() -> None:
    with _socket(socket.AF_INET, "127.0.0.1") as server, _socket(socket.AF_INET, "127.0.0.1") as client:
        client.sendto(b"q", server.getsockname())
        (_, name), *_ = batch_module.recv(server.fileno(), bytearray(100), 100)
        bad = b"\x00" * 3  # too short to be an address: EINVAL
        assert batch_module.send(server.fileno(), [(b"a1", bad), (b"a2", name), (b"a3", bad), (b"a4", name)]) == 2
        assert client.recv(100) == b"a2"
        assert client.recv(100) == b"a4"
        with pytest.raises(TypeError):
            batch_module.send(server.fileno(), [(b"a", "not bytes")])


def _queries() -> Iterator[bytes]:
    """Replays, case spellings, EDNS variants, names answered by the stages, refused names and malformed bytes."""
    for round_ in range(3):
        for name, rdtype in [
            ("www.bench.test", "A"),
            ("mail.bench.test", "AAAA"),
            ("nx.bench.test", "A"),
            ("ads.bench.test", "A"),
            ("elsewhere.test", "A"),
            ("www.bench.test", "MX"),
        ]:
            for spelling in (name, name.upper()):
                for edns in (-1, 0):
                    query = dns.message.make_query(spelling, rdtype, use_edns=edns)
                    query.id = round_
                    yield query.to_wire()
    yield b"\x00\x01garbage"
    yield b"\x12"
    yield b"\x00\x02" + b"\xff" * 40


Outcome = tuple[list[bytes | None], list[str], dict[tuple[str, tuple[str, ...]], int]]


def _answers(batch: bool, family: socket.AddressFamily, host: str, burst: bool) -> Outcome:
    """The answer to each of ``_queries()`` through a fresh Frontend behind one lane (None: no answer), with the
    query log's records (without times, and the client's port: each run has its own socket) and the metric counts."""

    async def run() -> Outcome:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")))
        feed = Feed([QueueSink("test", 1_000_000, interval=3600)], interval=3600)  # never dispatched: we read it
        frontend.runtime.observer.feed = feed
        listener = UdpListener(
            ListenConfig(address=f"[{host}]:0" if ":" in host else f"{host}:0", transport="udp"),
            frontend,
            reuse_port=False,
            batch=batch,
        )
        assert listener.batch is batch
        listener.start(asyncio.get_running_loop())
        queries = list(_queries())
        answers: list[bytes | None] = []
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            if burst:  # every query at once, each from its own ID; answers matched back by ID
                tagged = {i: b"%c%c" % (i >> 8, i & 0xFF) + wire[2:] for i, wire in enumerate(queries) if len(wire) > 2}
                for wire in tagged.values():
                    sock.sendto(wire, listener.address)
                by_id: dict[int, bytes] = {}
                try:
                    while len(by_id) < len(tagged):
                        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 1.0)
                        by_id[int.from_bytes(data[:2], "big")] = data
                except TimeoutError:
                    pass
                answers = [by_id.get(i) for i in range(len(queries))]
            else:
                for wire in queries:
                    sock.sendto(wire, listener.address)
                    try:
                        answers.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.5))
                    except TimeoutError:
                        answers.append(None)
        listener.stop()
        listener.close()
        records = sorted(
            repr((item[1].transport, item[1].address, item[2], item[4], item[5]))
            for item in items(take(feed.ring) or [])
            if isinstance(item, tuple)
        )
        counts = {key: count for key, (count,) in frontend.metrics.totals().answers.items()}
        feed.close()
        await frontend.close()
        return answers, records, counts

    return asyncio.run(run())


@pytest.mark.slow
@pytest.mark.parametrize("burst", [False, True], ids=["one-by-one", "burst"])
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_both_lanes_give_the_same_answers(family: socket.AddressFamily, host: str, burst: bool) -> None:
    """And, one query at a time (in a burst which query finds its replay stored already is a race), the same query
    log records and metrics: the batched lane's plain replays are answered, logged and counted in C."""
    batched, batched_records, batched_counts = _answers(True, family, host, burst)
    pure, pure_records, pure_counts = _answers(False, family, host, burst)
    assert batched == pure
    assert sum(answer is not None for answer in batched) >= 3 * 2 * 2 * 6  # every well-formed query answered
    if not burst:
        assert batched_records == pure_records
        assert batched_counts == pure_counts
        assert len(batched_records) >= 3 * 2 * 2 * 6


def test_the_environment_turns_batching_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTDNS_UDP_BATCH", "0")
    assert not udp.batching_available()
    monkeypatch.delenv("ZTDNS_UDP_BATCH")
    assert udp.batching_available()


def test_without_the_extension_the_pure_lane_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp, "_udpbatch", None)
    assert not udp.batching_available()
    frontend = Frontend(parse_config(CONFIG, "test", Path(".")))
    listener = UdpListener(ListenConfig(address="127.0.0.1:0", transport="udp"), frontend, reuse_port=False)
    assert not listener.batch
    listener.close()
    with pytest.raises(RuntimeError):
        UdpListener(ListenConfig(address="127.0.0.1:0", transport="udp"), frontend, reuse_port=False, batch=True)
