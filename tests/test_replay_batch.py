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
from pathlib import Path

import dns.message
import pytest

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.observe.events import SecurityEvent
from ztdns.observe.sinks import Feed, QueueSink

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
                queries.append(dns.message.make_query(spelling, rdtype, use_edns=edns).to_wire())
    return [*queries, dns.message.make_query("elsewhere.test", "A").to_wire(), b"\x00\x01garbage"]


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
    feed.events.clear()
    return frontend, feed


def _state(frontend: Frontend, feed: Feed) -> object:
    detector = frontend.detector
    answers = {key: count for key, (count,) in frontend.metrics.totals().answers.items()}
    events: list[tuple[object, ...]] = []
    for item in feed.events:
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
