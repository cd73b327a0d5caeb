"""``Frontend.fast_batch`` (the UDP lane's batch) against ``Frontend.fast`` (one query at a time), in process.

The same random stream of batches — replays, case spellings, names the pipeline answers, malformed bytes, several
clients sharing rate-limit buckets — goes through two frontends primed alike, with the detector's clock fixed for
a batch. Both must answer the same queries with the same bytes, leave the same ones to the pipeline, count the
same metrics, give the query log the same events and end with the same rate-limit state and verdicts, with
detection off, observing and enforcing.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import pytest

from ztdns import handler
from ztdns.cache import CacheEntry
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.detect.verdict import Verdict
from ztdns.handler import Frontend
from ztdns.model import Question
from ztdns.observe.events import SecurityEvent
from ztdns.observe.ring import items, take
from ztdns.observe.sinks import Feed, QueueSink
from ztdns.replay import Replay
from ztdns.transport.udp import ANSWER_ROOM, MAX_QUERY

CONFIG = """
[resolver]
mode = "none"

[identities.lab]
networks = ["127.0.0.0/8"]
policies = ["lab"]

[policies.lab]
allow = ["**.lab.test"]

[[local_zones]]
name = "lab.test"
records = ["lab.test. 3600 IN SOA ns.lab.test. h.lab.test. 1 3600 600 86400 300", "www.lab.test. 300 IN A 192.0.2.1",
           "mail.lab.test. 300 IN AAAA 2001:db8::1"]

[detect]
mode = "{mode}"
rate_limit = {{ per_prefix = 40.0, per_identity = {per_identity}, burst_seconds = 1.0 }}
"""

PEERS = {
    b"a": ClientInfo(Transport.UDP, "127.0.0.1", 1000),
    b"b": ClientInfo(Transport.UDP, "127.0.0.1", 1001),  # the same /32 as a: one bucket
    b"c": ClientInfo(Transport.UDP, "127.0.0.2", 1000),  # the same /24
    b"d": ClientInfo(Transport.UDP, "127.0.9.1", 1000),
}


def _queries() -> list[bytes]:
    queries = []
    for name, rdtype in [("www.lab.test", "A"), ("mail.lab.test", "AAAA"), ("nx.lab.test", "A")]:
        for spelling in (name, name.upper(), name.capitalize()):
            for edns in (-1, 0):
                queries.append(dns.message.make_query(spelling, rdtype, use_edns=edns))
    queries.append(dns.message.make_query("elsewhere.test", "A"))
    for number, query in enumerate(queries):
        query.id = number
    return [*(query.to_wire() for query in queries), b"\x00\x01garbage"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _frontend(mode: str, per_identity: float, clock: Clock) -> tuple[Frontend, Feed]:
    frontend = Frontend(parse_config(CONFIG.format(mode=mode, per_identity=per_identity), "test", Path(".")))
    frontend.detector.clock = clock
    feed = Feed([QueueSink("test", 1_000_000, interval=3600)], interval=3600)  # never dispatched: we read it
    frontend.runtime.observer.feed = feed
    for wire in _queries()[::3]:  # one spelling of each: the others are found by their normal form
        await frontend.handle(wire, PEERS[b"a"])
        await asyncio.sleep(0)  # the replay is stored in the next loop turn
    clock.now += 10  # buckets full again
    take(feed.ring)  # what the warm-up logged
    return frontend, feed


def _state(frontend: Frontend, feed: Feed) -> object:
    detector = frontend.detector
    answers = {key: count for key, (count,) in frontend.metrics.totals().answers.items()}
    events: list[tuple[object, ...]] = []
    for item in items(take(feed.ring) or []):
        if isinstance(item, SecurityEvent):  # a verdict's expiry is shown as wall-clock time: not the same twice
            events.append(
                (item.kind, {key: value for key, value in item.fields.items() if key not in ("until", "text")})
            )
        else:
            assert isinstance(item, tuple)
            events.append((item[1], item[2], item[4], item[5]))
    # A batch logs per client, so the order between clients differs (stable sort: each client's own order kept).
    by_client = sorted(events, key=lambda event: repr(event[0]) if event[0] != "detect" else repr(event))
    return (
        answers,
        sum(frontend.metrics.totals().latency_counts),
        by_client,
        detector.verdict_counts,
        {key: (bucket.tokens, bucket.stamp) for key, bucket in detector.buckets.items()},
        {key: (bucket.tokens, bucket.stamp) for key, bucket in detector.identity_buckets.items()},
        {key: (verdict.key, verdict.until, verdict.logged_at) for key, verdict in detector.limited.items()},
    )


def _by_peer(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted(pairs, key=lambda pair: pair[1])  # stable: each peer's own order kept


@pytest.mark.parametrize(
    ("mode", "per_identity"), [("off", 0.0), ("observe", 0.0), ("enforce", 0.0), ("enforce", 60.0)]
)
def test_a_batch_gets_what_one_query_at_a_time_gets(mode: str, per_identity: float) -> None:
    async def run() -> None:
        clock_one, clock_batch = Clock(), Clock()
        one, one_feed = await _frontend(mode, per_identity, clock_one)
        batched, batched_feed = await _frontend(mode, per_identity, clock_batch)
        queries = _queries()
        rng = random.Random(20)
        answered = limited = 0
        for _ in range(300):
            step = rng.choice([0.0, 0.001, 0.02, 0.3])
            clock_one.now += step
            clock_batch.now += step
            batch = [(rng.choice(queries), rng.choice(list(PEERS))) for _ in range(rng.randint(1, 64))]
            expected_answers, expected_left = [], []
            for wire, peer in batch:
                answer = one.fast(wire, PEERS[peer])
                if answer is None:
                    expected_left.append((wire, peer))
                else:
                    expected_answers.append((answer, peer))
            answers: list[tuple[bytes, bytes]] = []
            left = batched.fast_batch(batch, PEERS.__getitem__, answers)
            assert _by_peer(answers) == _by_peer(expected_answers)
            assert sorted(left) == sorted(expected_left)  # the pipeline's work: order is the event loop's
            answered += len(answers)
            limited += sum(wire[2:] == replay[2:] for wire, _ in left for replay in queries[::3][:2])
        assert _state(batched, batched_feed) == _state(one, one_feed)
        assert answered > 1000
        if mode == "enforce":
            assert limited > 100  # the limits did stop replays
        for frontend, feed in ((one, one_feed), (batched, batched_feed)):
            feed.close()
            await frontend.close()

    asyncio.run(run())


def _entry() -> CacheEntry:
    return CacheEntry(dns.rcode.Rcode.NOERROR, [], [], [], False, time.monotonic(), 300)


def _edge(case: str, replay: Replay, exact: dict[bytes, tuple[Replay, int, int]], key: bytes) -> None:
    """Put one replay in the state of ``case``."""
    if case == "expired":
        replay.expires = 0.0
    elif case in ("guard passes", "guard fails"):
        replay.guard = lambda: case == "guard passes"
    elif case == "rerender due":
        replay.offsets, replay.stored, replay.rerender_at = [(6, 300)], time.monotonic() - 5, 0.0
    elif case in ("cached", "prefetch due"):
        replay.entry, replay.question = _entry(), Question(dns.name.from_text("www.lab.test"), 1, 1)
        replay.prefetch_at = 0.0 if case == "prefetch due" else float("inf")
    elif case == "over the size limit":
        exact[key] = (replay, 0, 20)


def _run_edges(case: str, compiled: bool) -> object:
    async def run() -> object:
        frontend, feed = await _frontend("observe", 0.0, Clock())
        replays = frontend.runtime.replays
        prefetched: list[Question] = []
        replays.prefetch = lambda question, entry: prefetched.append(question)
        queries = _queries()
        answers: list[tuple[bytes, bytes]] = []
        frontend.fast_batch([(wire, b"a") for wire in queries], PEERS.__getitem__, answers)  # the exact tables
        for key, (replay, name_end, _) in list(replays.exact["lab"].items()):
            if name_end == 0:
                _edge(case, replay, replays.exact["lab"], key)
        if not compiled:
            handler.replay_run = handler.replay_run_in_python
        batch = [(wire, peer) for wire in queries for peer in (b"a", b"c")] * 3
        answers = []
        left = frontend.fast_batch(batch, PEERS.__getitem__, answers)
        handler.replay_run = native
        entries = {replay.entry.hits for replay in replays.tables["lab"].values() if replay.entry is not None}
        wires = sorted(replay.wire for replay in replays.tables["lab"].values())
        feed.close()
        await frontend.close()
        return answers, sorted(left), entries, wires, len(prefetched)

    native = handler.replay_run
    try:
        return asyncio.run(run())
    finally:
        handler.replay_run = native


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "expired",
        "guard passes",
        "guard fails",
        "rerender due",
        "cached",
        "prefetch due",
        "over the size limit",
    ],
)
def test_the_compiled_replay_run_answers_as_python_does(case: str) -> None:
    pytest.importorskip("ztdns.transport._udpbatch", reason="the _udpbatch extension is not built")
    assert handler.replay_run is not handler.replay_run_in_python
    assert _run_edges(case, compiled=True) == _run_edges(case, compiled=False)


def test_a_reload_forgets_which_identity_a_peer_has() -> None:
    async def run() -> tuple[list[str | None], list[str | None]]:
        frontend, feed = await _frontend("observe", 0.0, Clock())
        wire = _queries()[0]
        identities: list[list[str | None]] = []
        for config in (CONFIG, CONFIG.replace("[identities.lab]", "[identities.other]")):
            await frontend.reload(parse_config(config.format(mode="observe", per_identity=0.0), "test", Path(".")))
            frontend.runtime.observer.feed = feed
            await frontend.handle(wire, PEERS[b"a"])  # replays were dropped with the old config
            await asyncio.sleep(0)
            take(feed.ring)
            answers: list[tuple[bytes, bytes]] = []
            assert frontend.fast_batch([(wire, b"a")], PEERS.__getitem__, answers) == []
            logged = items(take(feed.ring) or [])
            identities.append([item[2].identity for item in logged if isinstance(item, tuple)])
        feed.close()
        await frontend.close()
        return identities[0], identities[1]

    assert asyncio.run(run()) == (["lab"], ["other"])


def _drain(sock: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096))
        except BlockingIOError:
            return received


@pytest.mark.parametrize(
    ("mode", "log", "dga"),
    [
        ("off", True, False),
        ("observe", True, False),
        ("observe", False, False),
        ("observe", True, True),
        ("enforce", True, False),
    ],
)
def test_the_lanes_loop_in_c_answers_logs_counts_and_charges_as_fast_batch(mode: str, log: bool, dga: bool) -> None:
    """``_udpbatch.serve`` (the batched lane with ``Frontend.plain_replays``: the plain replays answered, logged and
    sent in C, the rest through ``fast_batch``) against ``fast_batch`` alone, on real sockets: the same answers to
    the same clients, the same queries left to the pipeline, the same query log records, metrics and rate-limit
    state. Enforced limits need Python's decision per query: then serve leaves every datagram to fast_batch."""
    batch_module = pytest.importorskip("ztdns.transport._udpbatch", reason="the _udpbatch extension is not built")

    async def run() -> None:
        clock_python, clock_served = Clock(), Clock()
        python, python_feed = await _frontend(mode, 0.0, clock_python)
        served, served_feed = await _frontend(mode, 0.0, clock_served)
        if not log:
            python.runtime.observer.feed = served.runtime.observer.feed = None
        if dga:  # a DGA verdict on one client (another verdict besides): its replays stop, the others' do not
            for frontend in (python, served):
                blocks = frontend.detector.blocks
                blocks["dga", "127.0.0.2"] = Verdict("dga", "client=127.0.0.2", "1", "1", 1e12, "refuse", False)
                blocks["flood", "lab.test"] = Verdict("flood", "domain=lab.test", "1", "1", 1e12, "refuse", False)
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        hosts = {"a": "127.0.0.1", "b": "127.0.0.1", "c": "127.0.0.2", "d": "127.0.9.1"}  # as PEERS: shared buckets
        clients, names, infos = {}, {}, {}
        buffer, out = bytearray(64 * MAX_QUERY), bytearray(64 * ANSWER_ROOM)
        for key, host in hosts.items():
            sock = clients[key] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            sock.sendto(b"probe", server.getsockname())
            ((_, name),) = batch_module.recv(server.fileno(), bytearray(100), 100)
            names[key] = name
            infos[name] = ClientInfo(Transport.UDP, *sock.getsockname())
        queries = _queries()
        rng = random.Random(21)
        in_c = 0
        for _ in range(150):
            step = rng.choice([0.0, 0.001, 0.02, 0.3])
            clock_python.now += step
            clock_served.now += step
            batch = [(rng.choice(queries), rng.choice(list(hosts))) for _ in range(rng.randint(1, 64))]
            expected: list[tuple[bytes, bytes]] = []
            expected_left = python.fast_batch([(wire, names[key]) for wire, key in batch], infos.__getitem__, expected)
            for wire, key in batch:
                clients[key].sendto(wire, server.getsockname())
            answers: list[tuple[bytes, bytes]] = []
            left: list[tuple[bytes, bytes]] = []
            received = 0
            while received < len(batch):  # loopback delivers within sendto: mostly one call
                rest, charged, counted, latency = batch_module.serve(
                    server.fileno(), buffer, MAX_QUERY, out, served.plain_replays
                )
                answered = sum(count for _, _, count in charged)
                assert sum(count for _, count in counted) == answered
                received += len(rest) + answered
                in_c += answered
                if charged:
                    served.replays_served(charged, counted, latency)
                left += served.fast_batch(rest, infos.__getitem__, answers)
            answers += [(answer, names[key]) for key, sock in clients.items() for answer in _drain(sock)]
            assert sorted(answers) == sorted(expected)
            assert sorted(left) == sorted(expected_left)
        # Records of one client: those answered in C first, then fast_batch's (other spellings): compared as sets.
        python_state, served_state = _state(python, python_feed), _state(served, served_feed)
        assert sorted(map(repr, python_state[2])) == sorted(map(repr, served_state[2]))  # type: ignore[index]
        assert python_state[:2] + python_state[3:] == served_state[:2] + served_state[3:]  # type: ignore[index]
        assert in_c > 1000 if mode != "enforce" else in_c == 0
        server.close()
        for sock in clients.values():
            sock.close()
        for frontend, feed in ((python, python_feed), (served, served_feed)):
            feed.close()
            await frontend.close()

    asyncio.run(run())


def test_the_lanes_loop_in_c_leaves_to_python_what_its_answer_buffer_cannot_hold() -> None:
    batch_module = pytest.importorskip("ztdns.transport._udpbatch", reason="the _udpbatch extension is not built")

    async def run() -> None:
        frontend, feed = await _frontend("observe", 0.0, Clock())
        wire = _queries()[0]
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            server.bind(("127.0.0.1", 0))
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            buffer = bytearray(64 * MAX_QUERY)
            # First a warm-up: the sender is new, fast_batch meets it; then a buffer too small for an answer.
            for out, answered in ((bytearray(ANSWER_ROOM), None), (bytearray(20), 0), (bytearray(ANSWER_ROOM), 2)):
                for _ in range(2):
                    client.sendto(wire, server.getsockname())
                received = in_c = 0
                while received < 2:
                    left, charged, _, _ = batch_module.serve(
                        server.fileno(), buffer, MAX_QUERY, out, frontend.plain_replays
                    )
                    in_c += sum(count for _, _, count in charged)
                    received += len(left) + sum(count for _, _, count in charged)
                    if left:
                        frontend.fast_batch(left, lambda name: ClientInfo(Transport.UDP, *client.getsockname()), [])
                sent = len(_drain(client))
                if answered is not None:
                    assert (in_c, sent) == (answered, answered)
        feed.close()
        await frontend.close()

    asyncio.run(run())
